"""The layer harness: a database of :class:`LayerEntry` records and generic checks run over each.

Put your own layer through the same checks::

    from normact.testing import Case, LayerEntry, Layout, run_all
    entry = LayerEntry(name="mylayer", reference=my_reference, cases=(Case(init={"normalized_shape": 8},
                       shape=(4, 8)),), functional=lambda x, m: my_functional(x, m.weight), layout=Layout(...))
    run_all(entry)

(``name`` must be registered with :func:`normact.register`.)
"""

from normact.testing.checks import (
    CASE_CHECKS,
    assert_close,
    check_bad_init,
    check_bad_input,
    check_compile,
    check_constant_input,
    check_contract,
    check_detects_perturbation,
    check_dtypes,
    check_factory_kwargs,
    check_gradients,
    check_inplace,
    check_kink_derivatives,
    check_points,
    check_reference,
    check_serialization,
    cond_inputs,
    default_perturb,
    prepared,
    run_all,
    snapshot,
)
from normact.testing.entry import DEFAULT_TOLERANCES, Case, LayerEntry, Layout, Params, Reference, ReferenceGrad
from normact.testing.numerics import Numerics, Setting, check_norm_extremes, check_switch_derivatives, check_tails

__all__ = [
    "CASE_CHECKS",
    "DEFAULT_TOLERANCES",
    "Case",
    "LayerEntry",
    "Layout",
    "Numerics",
    "Params",
    "Reference",
    "ReferenceGrad",
    "Setting",
    "assert_close",
    "check_bad_init",
    "check_bad_input",
    "check_compile",
    "check_constant_input",
    "check_contract",
    "check_detects_perturbation",
    "check_dtypes",
    "check_factory_kwargs",
    "check_gradients",
    "check_inplace",
    "check_kink_derivatives",
    "check_norm_extremes",
    "check_points",
    "check_reference",
    "check_serialization",
    "check_switch_derivatives",
    "check_tails",
    "cond_inputs",
    "default_perturb",
    "prepared",
    "run_all",
    "snapshot",
]
