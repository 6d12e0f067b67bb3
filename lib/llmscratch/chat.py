"""Chat templates (chapter 08): how a conversation becomes the one string an instruction-tuned model reads.

SmolLM2 uses ChatML. Every turn is wrapped in special tokens the model learned during instruction tuning:

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
    <|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n
    <|im_start|>assistant\\n                                  <- the generation prompt: "your turn"

The model answers, then writes <|im_end|> (its end-of-turn token): that is why it stops.
"""

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ROLES = ("system", "user", "assistant")


def apply_chat_template(messages, add_generation_prompt: bool = False,
                        default_system: str | None = SMOLLM2_SYSTEM) -> str:
    """The ChatML text of `messages` (a list of {"role": ..., "content": ...}), as SmolLM2's tokenizer
    writes it: a conversation that does not open with a system message gets `default_system`."""
    if not messages:
        raise ValueError("the conversation is empty: give at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ValueError(f"message {i} must be a dict with a role in {ROLES} and a str content, got {m!r}")
    text = ""
    if messages[0]["role"] != "system" and default_system is not None:
        text += f"<|im_start|>system\n{default_system}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text
