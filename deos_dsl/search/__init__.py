"""deos_dsl.search: differentiable operator search on a frozen model (DESIGN 1.2, issue 7).

>>> from deos_dsl.search.loop import Options, search
>>> outcome = search(space, "embedded", "embedded", Path("runs/s"), Options(steps=300))
>>> outcome.schedule.values            # each limit on the discrete schedule (met exactly)
>>> outcome.accuracy                   # validation accuracy of the schedule and the dense model

One job per module: `graph` (relaxed graph + dense reference), `relaxation` (gate samples,
annealing), `constraints` (token flow, expected and discrete quantities), `lagrangian`
(one-sided augmented Lagrangian), `loop` (the search), `discretise` (exact schedule),
`validate`, `data`, `checkpoint`, `result`, `log`, `plots`, `render`, `ddp`. See docs/search.md.
"""
