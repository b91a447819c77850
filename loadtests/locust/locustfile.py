"""Load tests of the gateway: what locust loads (docs/load-testing.md).

    locust -f loadtests/locust/locustfile.py --headless -u 20 -r 10 -t 1m \
        --host http://127.0.0.1:8000 --csv results/run --html results/run.html

Users, each a class with one task carrying its tag: V2JsonUser (v2-json),
V2BinaryUser (v2-binary), GrpcUser (grpc), ChatUser (chat), ChatStreamUser
(chat, chat-stream) and EmbeddingsUser (embeddings). A load shape is another
file: `-f loadtests/locust/locustfile.py,loadtests/locust/shapes/step.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Locust imports this file by its path: make the repository importable from any
# working directory (it is not an installed package).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from locust import events  # noqa: E402

from loadtests.locust import hooks, options  # noqa: E402
from loadtests.locust.grpc_user import GrpcUser  # noqa: E402
from loadtests.locust.openai_users import ChatStreamUser, ChatUser, EmbeddingsUser  # noqa: E402
from loadtests.locust.v2_users import V2BinaryUser, V2JsonUser  # noqa: E402

# Locust runs the user classes it finds in this module's namespace.
__all__ = [
    "ChatStreamUser",
    "ChatUser",
    "EmbeddingsUser",
    "GrpcUser",
    "V2BinaryUser",
    "V2JsonUser",
]

events.init_command_line_parser.add_listener(options.add_arguments)
events.init.add_listener(hooks.choose_users)  # first: the classes it keeps are prepared
events.init.add_listener(hooks.prepare_users)
_verdict = hooks.Verdict()
events.quitting.add_listener(_verdict.judge)
events.quit.add_listener(_verdict.show)
