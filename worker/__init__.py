"""Celery workers that run restoration jobs: `python -m worker`.

Each worker process loads its model once at start-up (`models`), then consumes the model's queue
one job at a time (`tasks`): spec -> operator and options -> DDNM -> result (`pipeline`), recording
status and progress in Redis (`records`) and beating a heartbeat the API's /readyz reads
(`heartbeat`).
"""
