"""Analysis: what the stored events say, in five subpackages that import one way only.

==============  =============================================================================
statistics      pure statistics over sufficient statistics (no SQL, no I/O): proportions,
                means, ratios, sequential tests, SRM, power, multiple testing, the decision
reads           ClickHouse reads: the :class:`~feedbackloop.analysis.reads.Scope` filter,
                experiment / impact / version queries, the documented analyst queries
reports         experiment report, business impact, version trends: reads judged by statistics
failures        judged interactions, what counts as negative, failure slices, complaints
loop            closing the loop: prompt registry, regression suites, fine-tuning exports
==============  =============================================================================

Imports go ``statistics`` ← ``reads`` ← ``reports`` and ``reads`` ← ``failures`` ← ``loop``.
The statistics need the ``analysis`` extra (numpy, scipy): ``pip install 'feedbackloop[analysis]'``.
"""
