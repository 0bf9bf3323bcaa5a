"""What a user of the OpenHands SDK writes against OpenHands Cloud, pointed at Threadline instead.

Runs in the SDK client venv (tests/support/sdk_client.py), not in Threadline's: it imports only the
OpenHands packages and the standard library. Settings come from the environment (THREADLINE_URL,
THREADLINE_API_KEY, SANDBOX_SPEC_ID, LLM_BASE_URL, LLM_MODEL). The last line of its output is a JSON
report for the test to check.
"""

from __future__ import annotations

import json
import os
import sys

from openhands.sdk import LLM, Agent, Conversation, Tool
from openhands.tools.terminal import TerminalTool
from openhands.workspace import OpenHandsCloudWorkspace
from pydantic import SecretStr


def main() -> int:
    report: dict[str, object] = {}
    workspace = OpenHandsCloudWorkspace(
        cloud_api_url=os.environ["THREADLINE_URL"],
        cloud_api_key=os.environ["THREADLINE_API_KEY"],
        sandbox_spec_id=os.environ.get("SANDBOX_SPEC_ID") or None,
        init_timeout=180.0,
    )
    with workspace:
        report["sandbox_id"] = workspace._sandbox_id
        report["agent_server_url"] = workspace.host
        # The agent server says which version it is; the workspace's client carries the session key.
        report["agent_server_version"] = workspace.client.get("/server_info").json().get("version")
        command = workspace.execute_command("echo hello from $(whoami) in $(pwd)")
        report["command"] = {"exit_code": command.exit_code, "stdout": command.stdout.strip()}

        llm = LLM(
            model=os.environ["LLM_MODEL"],
            base_url=os.environ["LLM_BASE_URL"],
            api_key=SecretStr("fake-key"),
            usage_id="agent",
            num_retries=0,
        )
        agent = Agent(llm=llm, tools=[Tool(name=TerminalTool.name)])
        conversation = Conversation(agent=agent, workspace=workspace)
        try:
            conversation.send_message("Say hello and finish.")
            conversation.run()
            state = conversation.state
            report["conversation_id"] = str(conversation.id)
            report["execution_status"] = str(getattr(state.execution_status, "value", state.execution_status))
            report["event_kinds"] = [type(event).__name__ for event in state.events]
        finally:
            conversation.close()
    # Leaving the `with` ran the workspace's cleanup: it asked Threadline to delete the sandbox.
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
