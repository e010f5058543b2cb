"""Pairwise evaluation: a candidate policy against a baseline, judged in both orders.

`runner.run_eval` is the entry point; `judges` and `openai_judge` hold the judges, `pairwise` the
both-orders logic, `stats` the win-rate and its interval, `report` the files a run writes.
"""
