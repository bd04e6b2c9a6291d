"""The handshake rate limiter: the kernel selftest timings, IPv4 and IPv6 /64 keys, GC."""

import ipaddress

import pytest
from wgpy.ratelimiter import PACKET_COST, TOKEN_MAX, Ratelimiter, source_key

T0 = 1000.0

# Kernel selftest/ratelimiter.c expected_results: (milliseconds slept before, result).
# 20/s is one token per 50 ms and the bucket holds 5: a new source gets 5 at once, then
# one per 50 ms; 100 ms buys two.
KERNEL_TIMINGS = [
    (0, True),
    (0, True),
    (0, True),
    (0, True),
    (0, True),
    (0, False),
    (50, True),
    (0, False),
    (100, True),
    (0, True),
    (0, False),
]


def play(limiter, ip, steps, start=T0):
    now, results = start, []
    for sleep_ms, _ in steps:
        now += sleep_ms / 1000
        results.append(limiter.allow(ip, now))
    return results, now


def test_constants_are_the_kernels():
    assert PACKET_COST == 50_000_000  # ns
    assert TOKEN_MAX == 5 * PACKET_COST


@pytest.mark.parametrize("ip", ["192.0.2.1", "2001:db8::1", ipaddress.ip_address("10.0.0.1")])
def test_kernel_selftest_timings(ip):
    results, _ = play(Ratelimiter(), ip, KERNEL_TIMINGS)
    assert results == [expected for _, expected in KERNEL_TIMINGS]


def test_refill_caps_at_the_burst():
    limiter = Ratelimiter()
    for _ in range(5):
        assert limiter.allow("192.0.2.1", T0)
    # Idle for 0.2 s buys exactly four packets; for a minute, still only five.
    assert [limiter.allow("192.0.2.1", T0 + 0.2) for _ in range(5)] == [True] * 4 + [False]
    assert [limiter.allow("192.0.2.1", T0 + 60) for _ in range(6)] == [True] * 5 + [False]


def test_steady_rate_is_twenty_per_second():
    limiter = Ratelimiter()
    for _ in range(5):
        limiter.allow("192.0.2.1", T0)
    # Once the burst is spent, a packet every 50 ms passes and nothing more does.
    for k in range(1, 41):
        now = T0 + k * 0.05
        assert limiter.allow("192.0.2.1", now), k
        assert not limiter.allow("192.0.2.1", now), k
    # Twice that rate gets half through.
    passed = [limiter.allow("192.0.2.1", T0 + 2 + k * 0.025) for k in range(1, 41)]
    assert passed.count(True) == 20


def test_separate_buckets_per_ipv4_address():
    limiter = Ratelimiter()
    results, now = play(limiter, "192.0.2.1", KERNEL_TIMINGS[:6])
    assert results == [True] * 5 + [False]
    # The neighbours, and every address of the selftest's sweep, have their own.
    for i in range(2, 40):
        assert limiter.allow(f"192.0.2.{i}", now)
    assert not limiter.allow("192.0.2.1", now)


def test_ipv6_addresses_in_one_64_share_a_bucket():
    limiter = Ratelimiter()
    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:ffff"]
    results = [limiter.allow(same_64[i % 3], T0) for i in range(6)]
    assert results == [True] * 5 + [False]
    assert source_key(same_64[0]) == source_key(same_64[2])
    # The next /64 over, and a /64 differing in its first bits, are separate.
    assert limiter.allow("2001:db8:1:3::1", T0)
    assert limiter.allow("3001:db8:1:2::1", T0)
    assert not limiter.allow("2001:db8:1:2::9", T0)


def test_ipv4_mapped_addresses_count_as_ipv4():
    limiter = Ratelimiter()
    for _ in range(5):
        assert limiter.allow("::ffff:192.0.2.1", T0)
    assert not limiter.allow("192.0.2.1", T0)
    # Other IPv4 sources do not share ::ffff:0:0/64.
    assert limiter.allow("::ffff:192.0.2.2", T0)
    assert source_key("::ffff:192.0.2.1") == source_key("192.0.2.1") == (4, 0xC0000201)


def test_ipv4_and_ipv6_keys_do_not_collide():
    # Equal integers in the two families are different sources.
    assert source_key("0.0.0.0") != source_key("::1")
    assert source_key("0.0.0.1") != source_key("0:0:0:1::")


def test_idle_entries_are_collected():
    limiter = Ratelimiter()
    for i in range(10):
        limiter.allow(f"192.0.2.{i}", T0 + i * 0.1)
    assert len(limiter) == 10
    # An entry idle exactly 1 s stays; more than 1 s goes. Entries 0..4 were last used at
    # T0 .. T0 + 0.4.
    limiter.gc(T0 + 1.4)
    assert len(limiter) == 6
    limiter.gc(T0 + 1.4001)
    assert len(limiter) == 5
    # allow() collects too; a source in use is kept.
    for k in range(30):
        limiter.allow("198.51.100.7", T0 + 2 + k * 0.5)
    assert len(limiter) == 1


def test_collected_entry_starts_fresh():
    limiter = Ratelimiter()
    for _ in range(6):
        limiter.allow("192.0.2.1", T0)
    limiter.gc(T0 + 5)
    assert len(limiter) == 0
    assert [limiter.allow("192.0.2.1", T0 + 5) for _ in range(6)] == [True] * 5 + [False]


def test_table_is_bounded():
    limiter = Ratelimiter(max_entries=3)
    for i in range(3):
        assert limiter.allow(f"192.0.2.{i}", T0)
    # A fourth source is refused, and not remembered; the known ones are still served.
    assert not limiter.allow("192.0.2.200", T0)
    assert not limiter.allow("2001:db8::1", T0)
    assert len(limiter) == 3
    assert limiter.allow("192.0.2.0", T0 + 0.05)
    # Once the others have been idle for over a second, there is room again.
    assert limiter.allow("192.0.2.0", T0 + 0.9)
    assert limiter.allow("192.0.2.200", T0 + 1.5)
    assert len(limiter) == 2


def test_clock_going_backwards_is_treated_as_no_time():
    limiter = Ratelimiter()
    for _ in range(5):
        assert limiter.allow("192.0.2.1", T0)
    assert not limiter.allow("192.0.2.1", T0 - 10)
    assert not limiter.allow("192.0.2.1", T0 + 0.01)
    assert limiter.allow("192.0.2.1", T0 + 0.05)


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        Ratelimiter(max_entries=0)
    with pytest.raises(ValueError):
        Ratelimiter().allow("not an address", T0)
