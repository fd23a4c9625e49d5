"""The HTTP admin API through a real server (the instant echo backend), on SQLite and PostgreSQL: projects,
keys, prices, hardware costs, usage and the audit rows they leave; limits as a merge patch; amounts as plain
decimals. Who may call these routes is tested in test_gateway_api.py."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import USER, sdk


def test_admin_routes(site) -> None:  # type: ignore[no-untyped-def]
    srv, gw, keys = site
    h = {"Authorization": "Bearer " + keys["admin"]}
    r = httpx.post(srv.base + "/admin/projects", json={"name": "gamma", "rpm": 100, "budget_usd": "2.5"},
                   headers=h, timeout=10)
    assert r.status_code == 201 and r.json()["monthly_budget_usd"] == "2.5"
    assert httpx.post(srv.base + "/admin/projects", json={"name": "gamma"}, headers=h, timeout=10).status_code == 400
    r = httpx.post(srv.base + "/admin/keys", json={"project": "gamma", "name": "svc", "tpm": 5000}, headers=h,
                   timeout=10)
    assert r.status_code == 201
    new_key = r.json()["key"]
    out = sdk(srv, new_key).chat.completions.create(model="echo", messages=USER)
    assert out.choices[0].message.content == "one two three"
    listed = httpx.get(srv.base + "/admin/keys", params={"project": "gamma"}, headers=h, timeout=10).json()["data"]
    assert [k["prefix"] for k in listed] == [new_key[:11]] and "key" not in listed[0]
    assert new_key[12:] not in httpx.get(srv.base + "/admin/keys", headers=h, timeout=10).text
    bad = httpx.post(srv.base + "/admin/keys", json={"project": "gamma", "expires_at": "yesterday"}, headers=h,
                     timeout=10)
    assert bad.status_code == 400 and "expires_at" in bad.json()["error"]["message"]
    assert httpx.post(srv.base + "/admin/keys", json={"project": "nope"}, headers=h, timeout=10).status_code == 404
    r = httpx.put(srv.base + "/admin/prices/qwen3-max", json={"input": "1.2", "output": 6, "up_to_tokens": 32768},
                  headers=h, timeout=10)
    assert r.status_code == 200
    prices = httpx.get(srv.base + "/admin/prices", headers=h, timeout=10).json()["data"]
    assert {"model": "qwen3-max", "up_to_tokens": 32768, "input_per_m_usd": "1.2", "cached_input_per_m_usd": "1.2",
            "output_per_m_usd": "6"} in prices
    assert httpx.put(srv.base + "/admin/prices/x", json={"input": -1, "output": 1}, headers=h,
                     timeout=10).status_code == 400
    too_long = httpx.put(srv.base + "/admin/prices/" + "m" * 201, json={"input": 1, "output": 1}, headers=h,
                         timeout=10)  # PostgreSQL's column would refuse it: a 400 that says why, not a 500
    assert too_long.status_code == 400 and "at most 200 characters" in too_long.json()["error"]["message"]
    r = httpx.delete(srv.base + f"/admin/keys/{new_key[:11]}", headers=h, timeout=10)
    assert r.json() == {"prefix": new_key[:11], "revoked": True}
    with pytest.raises(openai.AuthenticationError):
        sdk(srv, new_key).models.list()  # revoked in this process: at once
    usage = httpx.get(srv.base + "/admin/usage", params={"project": "gamma", "by": "key"}, headers=h, timeout=10)
    assert usage.json()["data"][0]["requests"] == 1
    actions = [(e["action"], e["actor"]) for e in httpx.get(srv.base + "/admin/audit", headers=h,
                                                                  timeout=10).json()["data"]]
    actor = "key:" + keys["admin"][:11]
    for action in ("project.create", "key.create", "price.set", "key.revoke"):
        assert (action, actor) in actions
    # The rows read as the CLI's do (tests/gateway/test_admin_cli.py): one format whichever way a change came.
    details = {e["action"]: e["detail"] for e in httpx.get(srv.base + "/admin/audit", headers=h,
                                                           timeout=10).json()["data"] if e["actor"] == actor}
    assert details["project.create"] == "name=gamma rpm=100 tpm=- budget_usd=2.5"
    assert details["key.create"] == (f"prefix={new_key[:11]} name='svc' admin=False expires=- "
                                     "rpm=- tpm=5000 budget_usd=-")
    assert details["price.set"] == "model=qwen3-max up_to=32768 input_usd=1.2 cached_usd=1.2 output_usd=6"
    assert details["key.revoke"] == f"prefix={new_key[:11]} name='svc'"


def test_admin_limits_patch_and_amounts(site) -> None:  # type: ignore[no-untyped-def]
    """PATCH is a merge patch (null, 0 or "none" removes one limit, the others stay), and amounts are plain
    decimals however round or small: str() of a Decimal writes 1E+2."""
    srv, gw, keys = site
    h = {"Authorization": "Bearer " + keys["admin"]}
    url = srv.base + "/admin/projects/delta"
    r = httpx.post(srv.base + "/admin/projects", json={"name": "delta", "rpm": 10, "tpm": 100, "budget_usd": 100},
                   headers=h, timeout=10)
    assert r.status_code == 201 and r.json()["monthly_budget_usd"] == "100"

    def patch(body: dict) -> dict:
        r = httpx.patch(url, json=body, headers=h, timeout=10)
        assert r.status_code == 200, r.text
        j = r.json()
        return {"rpm": j["rpm"], "tpm": j["tpm"], "budget": j["monthly_budget_usd"]}

    assert patch({"rpm": None}) == {"rpm": None, "tpm": 100, "budget": "100"}
    assert patch({"tpm": 0, "budget_usd": "2000"}) == {"rpm": None, "tpm": None, "budget": "2000"}
    assert patch({"budget_usd": "none", "rpm": 5}) == {"rpm": 5, "tpm": None, "budget": None}
    assert patch({"budget_usd": 30}) == {"rpm": 5, "tpm": None, "budget": "30"}
    assert patch({"clear": True, "tpm": 7}) == {"rpm": None, "tpm": 7, "budget": None}
    assert patch({"budget_usd": 0}) == {"rpm": None, "tpm": 7, "budget": "0"}  # a budget of 0 is a hard stop
    assert patch({"budget_usd": "off"}) == {"rpm": None, "tpm": 7, "budget": None}
    for nothing in ({}, {"clear": False}):
        empty = httpx.patch(url, json=nothing, headers=h, timeout=10)
        assert empty.status_code == 400 and "nothing to change" in empty.json()["error"]["message"]
    huge = httpx.patch(url, json={"budget_usd": "1e30"}, headers=h, timeout=10)  # the column would overflow
    assert huge.status_code == 400 and "at most 1,000,000,000" in huge.json()["error"]["message"]
    k = httpx.post(srv.base + "/admin/keys", json={"project": "delta", "rpm": 0, "budget_usd": "none"}, headers=h,
                   timeout=10)
    assert k.status_code == 201 and k.json()["rpm"] is None and k.json()["monthly_budget_usd"] is None
    neg = httpx.patch(url, json={"rpm": -1}, headers=h, timeout=10)
    assert neg.status_code == 400 and "rpm" in neg.json()["error"]["message"]
    assert gw.projects.get("delta").rpm is None and gw.projects.get("delta").tpm == 7

    assert httpx.put(srv.base + "/admin/prices/tenner", json={"input": 10, "output": 20}, headers=h,
                     timeout=10).status_code == 200
    prices = httpx.get(srv.base + "/admin/prices", headers=h, timeout=10).json()["data"]
    assert {"model": "tenner", "up_to_tokens": None, "input_per_m_usd": "10", "cached_input_per_m_usd": "10",
            "output_per_m_usd": "20"} in prices
    assert {"model": "echo", "up_to_tokens": None, "input_per_m_usd": "1000", "cached_input_per_m_usd": "1000",
            "output_per_m_usd": "1000"} in prices

    sdk(srv, keys["b"]).chat.completions.create(model="echo", messages=USER)
    groups = httpx.get(srv.base + "/admin/usage", params={"by": "project"}, headers=h, timeout=10).json()["data"]
    assert "beta" in {g["group"] for g in groups}  # names, as the CLI shows them, not ids


def test_local_costs_over_http(site) -> None:  # type: ignore[no-untyped-def]
    srv, gw, keys = site
    h = {"Authorization": "Bearer " + keys["admin"]}
    url = srv.base + "/admin/local-costs/"
    r = httpx.put(url + "round", json={"per_hour_usd": 10}, headers=h, timeout=10)
    assert r.status_code == 200
    listed = {c["model"]: c for c in httpx.get(srv.base + "/admin/local-costs", headers=h, timeout=10).json()["data"]}
    assert listed["round"]["per_hour_usd"] == "10"
    httpx.delete(url + "round", headers=h, timeout=10)
    r = httpx.put(url + "qwen3-8b", json={"per_hour_usd": "1.8", "compare_to": "qwen-plus"}, headers=h, timeout=10)
    assert r.status_code == 200
    listed = {c["model"]: c for c in httpx.get(srv.base + "/admin/local-costs", headers=h, timeout=10).json()["data"]}
    # No local request of this model in the ledger yet: a rate but no measured cost per million.
    assert listed["qwen3-8b"] == {"model": "qwen3-8b", "per_hour_usd": "1.8", "compare_to": "qwen-plus",
                                  "tokens": 0, "busy_seconds": 0.0, "per_m_usd": None}
    bad = httpx.put(url + "qwen3-8b", json={"per_hour_usd": -1}, headers=h, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "per_hour_usd"
    assert httpx.put(url + "m" * 201, json={"per_hour_usd": 1}, headers=h, timeout=10).status_code == 400
    assert httpx.delete(url + "qwen3-8b", headers=h, timeout=10).json() == {"model": "qwen3-8b", "removed": True}
    gone = httpx.delete(url + "qwen3-8b", headers=h, timeout=10)
    assert gone.status_code == 404 and "no hardware cost" in gone.json()["error"]["message"]
    actor = "key:" + keys["admin"][:11]
    rows = [(e.action, e.detail) for e in reversed(gw.audit.list()) if e.actor == actor and "local" in e.action
            and "qwen3-8b" in e.detail]
    assert rows == [("price.local", "model=qwen3-8b usd_per_hour=1.8 compare_to=qwen-plus"),
                    ("price.local_remove", "model=qwen3-8b")]
