"""Celery workers that run restoration jobs: `python -m worker`.

Each worker process loads its model once at start-up (`pipeline.models`), then consumes the
model's queue, holding DDNM_WORKER_SLOTS jobs at once (`tasks`, one thread each): spec ->
operator and options -> a sampler run (`pipeline`), which the process's one `scheduler` thread
drives together with the runs of the other held jobs, in shared network forwards; each job
thread records status and progress in Redis (`records`), and the process beats a heartbeat
listing its jobs (`heartbeat`), which the API's /readyz and reaper read.
"""
