"""/docs works offline: the page names no other host, and the script, style and icon it loads are
served by the app. CORS is off unless an origin is allowed."""

from __future__ import annotations

import re


def test_docs_page_loads_everything_from_the_server_itself(serve, client):
    server = serve()
    r = client.get(f"{server.url}/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert not re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+", page.replace(server.url, "")), "a URL to another host"
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    refs += re.findall(r"""url\s*:\s*["']([^"']+)["']""", page)  # the OpenAPI document Swagger UI fetches
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png", "json": "application/json"}
    assert {ref.rsplit(".", 1)[-1] for ref in refs} >= set(kinds), refs
    for ref in refs:
        assert ref.startswith("/"), ref
        asset = client.get(f"{server.url}{ref}")
        assert asset.status_code == 200, ref
        assert kinds[ref.rsplit(".", 1)[-1]] in asset.headers["content-type"], (ref, asset.headers["content-type"])
        assert len(asset.content) > 1000, ref
    assert "SwaggerUIBundle" in client.get(f"{server.url}/docs/assets/swagger-ui-bundle.js").text
    assert client.get(f"{server.url}/openapi.json").json()["paths"]["/jobs"]
    assert client.get(f"{server.url}/redoc").status_code == 404  # FastAPI's ReDoc page loads from a CDN


def test_cors_is_off_by_default(serve, client):
    server = serve()
    origin = {"Origin": "https://map.example.org"}
    r = client.get(f"{server.url}/jobs", headers=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = client.options(f"{server.url}/jobs", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origin_allows_that_origin_only(serve, client):
    server = serve(cors_origins=["https://map.example.org"], api_key="s3cret")
    preflight = {"Origin": "https://map.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key, content-type"}
    r = client.options(f"{server.url}/jobs", headers=preflight)  # a preflight carries no key
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "https://map.example.org"
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
    r = client.get(f"{server.url}/jobs", headers={"Origin": "https://map.example.org", "X-API-Key": "s3cret"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://map.example.org"
    assert "location" in r.headers["access-control-expose-headers"].lower()
    other = client.options(f"{server.url}/jobs", headers={**preflight, "Origin": "https://evil.example.com"})
    assert other.headers.get("access-control-allow-origin") != "https://evil.example.com"
    r = client.get(f"{server.url}/jobs", headers={"Origin": "https://evil.example.com", "X-API-Key": "s3cret"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origin_must_be_an_origin():
    import pytest

    from serving.api.web import check_origin

    assert check_origin("https://map.example.org") == "https://map.example.org"
    assert check_origin("http://localhost:5173/") == "http://localhost:5173"
    assert check_origin("*") == "*"
    for bad in ("map.example.org", "https://map.example.org/path", "ftp://x.org", "https://"):
        with pytest.raises(ValueError, match="origin"):
            check_origin(bad)
