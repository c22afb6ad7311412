"""uepjax: straggler-tolerant distributed matrix multiplication with UEP codes.

The modules are the concepts: `fields` (finite-field arithmetic and batched
elimination), `codes` (NOW, EW and the baselines), `latency` (response-time models),
`partition` (rxc / cxr blocks, class tables, Gram matrices), `decode` (progressive
decoding), `simulate` (the Monte Carlo engine), `theory` (the large-field expectations
of the paper). Names that mean the same thing everywhere are re-exported here;
`theory.decoding_probabilities` and `simulate.decoding_probabilities` keep their module
prefix, since one is exact and one is estimated.
"""

from uepjax import codes, decode, fields, latency, partition, simulate, theory
from uepjax.codes import Code, Scheme, ew, make_code, mds, now
from uepjax.decode import recovered_after_arrivals, recovery_index
from uepjax.fields import Field, get_field, rank, recoverable
from uepjax.latency import Exponential, Pareto, ShiftedExponential, Weibull, with_load
from uepjax.simulate import Estimate, curves, loss_by_arrivals, loss_by_deadline

__version__ = "0.1.0"

__all__ = [
    "codes",
    "decode",
    "fields",
    "latency",
    "partition",
    "simulate",
    "theory",
    "Code",
    "Scheme",
    "now",
    "ew",
    "mds",
    "make_code",
    "recovery_index",
    "recovered_after_arrivals",
    "Field",
    "get_field",
    "rank",
    "recoverable",
    "Exponential",
    "ShiftedExponential",
    "Pareto",
    "Weibull",
    "with_load",
    "Estimate",
    "curves",
    "loss_by_arrivals",
    "loss_by_deadline",
]
