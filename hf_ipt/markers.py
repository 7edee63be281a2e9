"""The instruction synthesizer: its Hub id, and the markers of its prompts and outputs (plain text, not added tokens).

`<s>` and `</s>` are written literally in prompts and are the tokenizer's BOS and EOS. The prompt builder
(`hf_ipt.synthesis.prompts`), the output parser and the server engine (which strips the literal BOS for servers whose
tokenizer adds one) all read them from here, so the engines need nothing from the synthesis package.

Example:
    >>> f"{BOS} {CON_OPEN} A text. {CON_CLOSE}"
    '<s> <CON> A text. </CON>'
"""

BOS = "<s>"
EOS = "</s>"
CON_OPEN = "<CON>"
CON_CLOSE = "</CON>"
QUE = "<QUE>"
ANS = "<ANS>"
END = "</END>"

# the instruction synthesizer of the paper on the Hub: the default model, and what a card names when none is given
DEFAULT_MODEL = "instruction-pretrain/instruction-synthesizer"
