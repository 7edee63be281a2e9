"""The instruction synthesizer's markers: plain text in its prompts and outputs, not added tokens.

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
