from tests.conftest import LiveServer


def test_ready_and_me(server: LiveServer) -> None:
    user, key = server.user("carol")
    with server.client(key) as client:
        assert client.get("/ready").json() == "OK"
        me = client.get("/api/v1/users/me")
        assert me.status_code == 200
        assert me.json()["name"] == "carol"
        conv = server.conversation(user.id, title="hello")
        got = client.get(f"/api/v1/app-conversations/{conv['id']}")
        assert got.status_code == 200, got.text
        assert got.json()["title"] == "hello"
