"""The one error the contract raises."""

from __future__ import annotations


class ContractError(ValueError):
    """A model folder, or a value meant for one, that breaks the contract; the message says where and why."""
