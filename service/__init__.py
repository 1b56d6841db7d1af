"""The REST API: admits restoration jobs, tracks them in Redis, serves their results.

It validates every upload and spec here (with the shared `contract`), then hands the job to the
Celery workers by task name. It never imports torch.
"""
