"""Send limits shared by every process, kept in Redis (operations.md: per-user rate
limits across processes): one token bucket per user, taken atomically by a Lua script
on Redis's clock, so a user spread over several processes gets one allowance.

While Redis cannot be reached each process limits with its own bucket (a user then gets
up to one allowance per process): sends keep working, as they must.
"""

from __future__ import annotations

import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError

from .limits import TokenBucket

log = structlog.get_logger("unichatd.limits")

TAKE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + math.max(0, now_ms - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) / rate * 1000))
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now_ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""
"""Mirrors ``limits.TokenBucket.take``; the key expires once the bucket would be full."""


class SharedLimits:
    def __init__(self, client: redis.Redis, prefix: str, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._prefix = f"{prefix}:sends:"
        self._take = client.register_script(TAKE)
        self._failing = False

    async def take(self, user_id: int, fallback: TokenBucket) -> int:
        """A token of the user's shared bucket: 0 when granted, else the milliseconds until
        one is; ``fallback`` (this process's bucket) decides while Redis is away."""
        try:
            wait = int(await self._take(keys=[f"{self._prefix}{user_id}"], args=[self.rate, self.burst]))
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("limits.shared_unavailable", error=str(exc))
                self._failing = True
            return fallback.take()
        if self._failing:
            log.info("limits.shared_available")
            self._failing = False
        return wait
