"""`python -m tests.campaign.interrupt_at <point> <signal> <llem arguments...>`: the real `python -m llem`, sent a
signal (by itself, as a user's Ctrl-C or a `kill` would arrive) at one step of the campaign outside the run loop:

- `plan`: as the campaign is planned (before anything is recorded);
- `state`: inside the first transaction that creates or reconciles the campaign state;
- `preflight`: as the preflight starts;
- `finish`: as the finish step starts, after every job ended.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def _signal_once(signum: int) -> Any:
    sent: list[int] = []

    def send(*_: Any) -> None:
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)

    return send


def _before(owner: Any, name: str, send: Any) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        send()
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def main() -> None:
    point, signame, *arguments = sys.argv[1:]
    send = _signal_once(getattr(signal, signame))
    import llem.campaign.state as state
    from llem.campaign.engine import Campaign

    if point == "plan":
        import llem.campaign.api as api

        original_plan = api.plan_campaign

        def planning(*args: Any, **kwargs: Any) -> Any:
            send()
            return original_plan(*args, **kwargs)

        api.plan_campaign = planning  # type: ignore[assignment]
    elif point == "state":
        def in_the_transaction(path: Path) -> None:
            if Path(path).name == state.DB_NAME:
                send()

        state.crash_point = in_the_transaction  # type: ignore[assignment]
    elif point == "preflight":
        _before(Campaign, "_preflight", send)
    elif point == "finish":
        _before(Campaign, "_finish", send)
    else:
        raise SystemExit(f"unknown point {point!r}")
    from llem.app import main as llem_main

    sys.argv = ["llem", *arguments]
    llem_main()


if __name__ == "__main__":
    main()
