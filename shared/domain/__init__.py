"""The pure domain: the event contract, the steps, the records, the ports and the step flow.

It imports no driver, broker client, logger or clock: what runs it hands it those through
:mod:`shared.domain.ports` (the contracts in ``[tool.importlinter]`` hold it to that).
"""
