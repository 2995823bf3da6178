"""Entry for the agent's ``policy.*`` ops (see :mod:`fabric.policy.service`)."""

from fabric.policy.service import handle_policy_op

__all__ = ["handle_policy_op"]
