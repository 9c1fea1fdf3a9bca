"""Rehearsals: drive the chapter's election-night scenario against a running mesh with a real
load generator (hey) and report what was measured (`interstate rehearse`).

    scenario  the plan: phases, rates, the hiccup (pure)
    load      hey: its command line, one process per phase, its CSV parsed (pure parser)
    runner    the run: phases in turn, the fault on and off, status polls, progress lines
    report    measured rows and polls -> statistics, text, HTML with inline SVG (pure)
    command   the click command `rehearse`
"""
