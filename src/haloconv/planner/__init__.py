"""The planner: what runs where, decided once, from shapes (and filters) alone — the Plan of
a convolution (``plans``: haloconv.plan, the plans kept per configuration), the cost
model's choice among candidates (``choice``), a streamed run's tiles (``streaming``).  It
chooses; the cost model (costmodel/) prices; the engines run what it hands them."""

from haloconv.planner.plans import check_filters, forget, plan, plan_for, resolved

__all__ = ["check_filters", "forget", "plan", "plan_for", "resolved"]
