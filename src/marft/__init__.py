"""marft: multi-agent reinforcement fine-tuning of LLM teams.

One base model in memory for the whole team, one LoRA adapter per agent, Flex-MG rollouts
(MARFT, Liao, Wen, Wang, Zhang 2025) and APPO training.
"""

__version__ = "0.1.0"
