"""Server-sent events exactly as OpenAI's clients parse them: `data: {json}` and a blank line per
event, `data: [DONE]` last."""
from __future__ import annotations

import json

DONE = "data: [DONE]\n\n"


def event(payload: dict) -> str:
    # Compact separators: what OpenAI sends, and no client depends on the spacing.
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"
