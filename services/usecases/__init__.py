"""The use cases, apart from the entry points that parse, call and render them.

- ``payloads``: a provision request's payload parsed and checked;
- ``requests``: request, deprovision and restore a project (write once, publish by the outbox);
- ``queries``: a project's status and view, the operators' list, the final result;
- ``inprocess``: the seven steps run in one process, without Kafka (seed 004's baseline);
- ``seed``: the seeds' Python API, on one app installed by :func:`seed.configure`;
- ``jobs``: the seed's job-handler registry;
- ``replay``, ``reconcile``, ``credentials``: the operators' repairs and the tenant's password.

Each use case takes its collaborators (the ``App`` of ``services.bootstrap``) as a parameter.
Nothing is re-exported here: a caller imports the module of the use case it runs.
"""
