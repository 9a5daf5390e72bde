"""The Plan, the contract between planner, runner, launchers and scripts (plan.py), and the check of a plan.json
read back (plan_check.py)."""
