"""Adapters from llmi's reward to training frameworks: :mod:`llmi.integrations.trl` (TRL's reward-function
contract); ``llmi.integrations.verl`` comes with training. Each adapter imports its framework lazily, if at all.
"""
