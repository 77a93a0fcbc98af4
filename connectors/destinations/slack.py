"""Case tasks as Slack messages in a staff channel: `chat.postMessage`, then `chat.update`.

- Auth: a bot token (`Bearer xoxb-...`) with `chat:write` and `channels:history` (or
  `groups:history` for a private channel, which is what a district should use).
- Create: `chat.postMessage` with message metadata `{"event_type": "casebridge_case",
  "event_payload": {"subject": "case-12", "revision": 3}}`; the stored link is `channel:ts`.
- Update: `chat.update` with the stored channel and ts (a closed case says so in the message).
- Slack has no idempotency key, so a post whose answer was lost is `OutcomeUnknown`; `find`
  reads `conversations.history` with `include_all_metadata` and matches our subject.
- Slack answers HTTP 200 with `{"ok": false, "error": ...}`: server-side errors are transient,
  everything else permanent; a 429 carries `Retry-After`.

slack-sdk is not used: its WebClient retries on its own (RateLimitErrorRetryHandler) and hides
whether a post left, which the delivery core must know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from connectors.base import DeliveryResult, FindsItsLink, Idempotency, Link
from connectors.destinations.http_base import HttpDestinationSettings, ToolHttp
from connectors.destinations.task_text import task_text
from connectors.registry import register
from service.config import Settings
from service.errors import PermanentError, TransientError

EVENT_TYPE = "casebridge_case"
TRANSIENT = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout",
                       "ratelimited", "team_added_to_org"})  # fmt: skip


class SlackSettings(HttpDestinationSettings):
    """Case tasks as messages in a Slack channel (posted, then updated in place)."""

    kind: Literal["slack"]
    token: str  # xoxb-..., from ${ENV}
    channel: str  # a channel id, e.g. C0123456789
    base_url: str = "https://slack.com/api"
    history_limit: int = Field(200, ge=1, le=999)


class SlackDestination(FindsItsLink):
    idempotency: Idempotency = "stored_link"

    def __init__(self, name: str, cfg: SlackSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.base = cfg.base_url.rstrip("/")
        self.http = ToolHttp(name, cfg, lambda: f"Bearer {cfg.token}")

    def _call(self, method: str, *, safe: bool, body: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        verb = "POST" if body is not None else "GET"
        resp = self.http.request(verb, f"{self.base}/{method}", safe=safe, json=body, params=params)
        answer: dict[str, Any] = resp.json()
        if not answer.get("ok"):
            error = str(answer.get("error"))
            if error in TRANSIENT:
                raise TransientError(f"{self.name}: {method} answered {error}")
            raise PermanentError(f"{self.name}: {method} answered {error}")
        return answer

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        heading = ("[closed] " if task.get("status") == "closed" else "") + str(task["title"])
        text = f"*{heading}* [{subject}]\n{task_text(task)}"
        metadata = {
            "event_type": EVENT_TYPE,
            "event_payload": {"subject": subject, "revision": task.get("revision")},
        }
        if link is None:
            answer = self._call("chat.postMessage", safe=False, body={
                "channel": self.cfg.channel, "text": text, "metadata": metadata,
                "unfurl_links": False,
            })  # fmt: skip
            return DeliveryResult(f"{answer['channel']}:{answer['ts']}", None, {"op": "create"})
        channel, _, ts = link.external_id.partition(":")
        self._call("chat.update", safe=True, body={
            "channel": channel, "ts": ts, "text": text, "metadata": metadata,
        })  # fmt: skip
        return DeliveryResult(link.external_id, None, {"op": "update"})

    def find(self, subject: str) -> Link | None:
        answer = self._call("conversations.history", safe=True, params={
            "channel": self.cfg.channel, "include_all_metadata": "true",
            "limit": self.cfg.history_limit,
        })  # fmt: skip
        for message in answer.get("messages") or []:
            meta = message.get("metadata") or {}
            if (
                meta.get("event_type") == EVENT_TYPE
                and (meta.get("event_payload") or {}).get("subject") == subject
            ):
                return Link(f"{self.cfg.channel}:{message['ts']}")
        return None


def build(settings: Settings, cfg: SlackSettings) -> SlackDestination:
    return SlackDestination(cfg.name, cfg)


register("destination", "slack", SlackSettings, build, SlackDestination.idempotency)
