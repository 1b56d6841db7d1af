"""What the service, the workers and the command line agree on.

    contract.spec      the task spec (pydantic): the degradation chain and the sampler settings, and
                       the image geometry that follows from it
    contract.jobs      the job records in Redis, the task name and queues, the Celery wire settings
    contract.settings  the environment settings both processes read

This package never imports torch, so the API image stays slim.
"""
