"""Per-key rate limit: a token bucket in Redis, refilled and spent in one Lua script.

One script makes the read-refill-spend atomic across any number of API replicas, and it reads
the clock from Redis (``TIME``) so replicas with skewed clocks share one notion of "now".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from common import keys

# KEYS: bucket.  ARGV: rate (tokens/s), burst (bucket size), cost
# Returns {allowed (0/1), tokens left, seconds until `cost` tokens are there} (as strings:
# Redis truncates Lua numbers to integers).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, wait = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: float
    retry_after_s: int  # whole seconds until a request would be allowed (0 when allowed)


class RateLimiter:
    """Token buckets keyed by API key id. Safe to share between threads."""

    def __init__(self, client: redis.Redis) -> None:
        self._take = client.register_script(_TAKE)

    def take(self, key_id: str, *, rate_per_s: float, burst: int, cost: int = 1) -> Verdict:
        allowed, remaining, wait = self._take(
            keys=[keys.rate_bucket(key_id)], args=[repr(rate_per_s), burst, cost]
        )
        wait_s = float(wait)
        return Verdict(
            allowed=bool(int(allowed)),
            remaining=float(remaining),
            retry_after_s=max(1, math.ceil(wait_s)) if wait_s > 0 else 0,
        )
