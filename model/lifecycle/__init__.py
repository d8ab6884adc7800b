"""A task's life around its job: attempts and leases (attempts.py), one attempt run around the
job (runner.py), its one end (ending.py: state, uploads, webhooks, metrics) and the reaper's
clean-up (housekeeping.py). Above the task core (model/tasks) and the jobs (model/jobs), which
import nothing of it.
"""
