"""Webhook URLs: public receivers only, every spelling of an internal address refused."""

from __future__ import annotations

import pytest

from common.ssrf import UrlRefused, check_url

# Each one reaches (or could reach) something inside: loopback, private networks, the cloud
# metadata service, "this host", CGNAT, IPv6 local ranges, IPv4 hidden in IPv6, and the
# numeric spellings resolvers read as 127.0.0.1.
INTERNAL = [
    "https://127.0.0.1/hook",
    "https://127.0.0.53:8443/hook",
    "https://localhost/hook",
    "https://localhost./hook",
    "https://10.0.0.1/hook",
    "https://172.16.0.1/hook",
    "https://172.31.255.254/hook",
    "https://192.168.1.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://0.0.0.0/hook",
    "https://0.1.2.3/hook",
    "https://100.64.0.1/hook",
    "https://100.127.255.254/hook",
    "https://224.0.0.1/hook",
    "https://255.255.255.255/hook",
    "https://[::1]/hook",
    "https://[::]/hook",
    "https://[fc00::1]/hook",
    "https://[fd12:3456::1]/hook",
    "https://[fe80::1]/hook",
    "https://[fe80::1%25eth0]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[::ffff:8.8.8.8]/hook",  # mapped: refused whatever it embeds
    "https://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
    "https://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "https://2130706433/hook",
    "https://0x7f.1/hook",
    "https://0x7f000001/hook",
    "https://017700000001/hook",
    "https://0177.0.0.1/hook",
    "https://127.1/hook",
    "https://3232235777/hook",  # 192.168.1.1
]

MALFORMED = [
    "http://8.8.8.8/hook",  # http without SDQ_WEBHOOK_ALLOW_HTTP
    "ftp://8.8.8.8/hook",
    "file:///etc/passwd",
    "gopher://8.8.8.8/",
    "https://user:pw@8.8.8.8/hook",
    "https://8.8.8.8@127.0.0.1/hook",
    "https:///hook",
    "https://8.8.8.8:0/hook",
    "https://8.8.8.8:99999/hook",
    "https://8.8.8.8/ho ok",
    "https://8.8.8.8\\@127.0.0.1/",
    "https://exa\nmple.com/",
    "https://" + "a" * 64 + ".example/",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused):
        check_url(url, allow_http=True)


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_and_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused):
        check_url(url, allow_http=False)


def test_a_name_is_refused_if_any_address_it_resolves_to_is_internal() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.1.2.3"]

    with pytest.raises(UrlRefused, match="non-public"):
        check_url("https://hooks.example/x", allow_http=False, resolver=resolver)


def test_a_name_that_does_not_resolve_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(UrlRefused, match="does not resolve"):
        check_url("https://nowhere.example/x", allow_http=False, resolver=resolver)


def test_public_receivers_pass_with_the_addresses_that_were_checked() -> None:
    target = check_url(
        "https://Hooks.Example:8443/in?x=1",
        allow_http=False,
        resolver=lambda host, port: ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    )
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example", 8443)
    assert target.addresses == ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    assert check_url("https://8.8.8.8/x", allow_http=False).addresses == ("8.8.8.8",)
    assert check_url("http://8.8.8.8/x", allow_http=True).scheme == "http"


def test_the_operator_allow_list_admits_internal_receivers() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    named = check_url(
        "https://hooks.internal/x",
        allow_http=False,
        allowed_hosts=["hooks.internal"],
        resolver=resolver,
    )
    assert named.addresses == ("10.0.0.7",)
    by_network = check_url(
        "https://other.internal/x",
        allow_http=False,
        allowed_hosts=["10.0.0.0/24"],
        resolver=resolver,
    )
    assert by_network.addresses == ("10.0.0.7",)
    assert check_url("http://127.0.0.1:9/x", allow_http=True, allowed_hosts=["127.0.0.1"])
    # The allow-list admits what it names, nothing else.
    with pytest.raises(UrlRefused):
        check_url("https://127.0.0.2/x", allow_http=False, allowed_hosts=["127.0.0.1"])
    with pytest.raises(UrlRefused):
        check_url("https://2130706433/x", allow_http=False, allowed_hosts=["127.0.0.0/8"])
