"""The verbs, one module each (`shardwise <verb>` runs shardwise/verbs/<verb>.py's `run(argv)`), and the Hydra
app around them (app.py).

They sit above both packages: a verb reads the composed config, asks `planner` for a plan and `runner` to run
it; neither package imports anything from here. plan and probe import neither torch nor transformers.
"""
