"""The application layer: a task spec and uploaded bytes through the `ddnm` library to a result.

    tasks   spec -> operator chain and sampler options
    models  the model a job runs on (`ServedModel`), loaded from settings or by name
    job     the one job pipeline: `prepare` (the run: the whole image, or its windows by the
            spec's plan) and its `finish` (the result)

Used by the worker and by `ddnm restore`; it imports `ddnm` and `contract`, never the service.
"""
