"""Where the profile store keeps each thing in Redis: its keys.

Key layout (format 2, see README):

    cpmiw:2:{<bucket>}:id:<identity>   the subscriber's whole profile (JSON), one copy under
                                       each of its canonical identities (its own included)
    cpmiw:2:{<bucket>}:ready           set when the store was written complete
    cpmiw:2:{changes}                  stream of changes, one entry per write: the identities
    cpmiw:2:{changes}:epoch            random token set by the first write into an empty store
    cpmiw:2:{<bucket>}:history:<subscriber>  the subscriber's last changes (who, when, why),
                                       newest first: HISTORY_KEPT entries, gone HISTORY_TTL
                                       after a delete (store/profiles.py; the bucket: the
                                       subscriber's own)

Why a copy under each identity: a look-up by any alias is one read of one key, so on Redis
Cluster it goes to one shard, and a reader can never see half a subscriber (a profile without
its alias, or an alias to a profile not written yet): each key holds a whole profile, the old or
the new one. Why buckets: an identity's bucket (CRC-32 of it, one of 4096) is the hash tag of its
key, so its readiness marker lives in the same slot and a look-up checks both in one script, on
Cluster too: a shard lost and emptied has lost its buckets' markers, and its subscribers read as
"store not ready", never as "no such user". 4096 buckets spread over the 16384 slots spread the
subscribers evenly over any number of shards up to a few dozen. The change stream and its epoch
share a tag (`{changes}`), so that the stream script reads both on one shard.
"""

from __future__ import annotations

import zlib

PREFIX = "cpmiw:2:"
BUCKETS = 4096  # hash tags of the identity keys (a fixed part of the layout)
CHANGES = PREFIX + "{changes}"
EPOCH = CHANGES + ":epoch"
CHUNK = 10_000  # keys per MGET or SCAN step: one round trip each, replies of bounded size


def bucket(identity: str) -> str:
    """The bucket of a canonical identity: the hash tag of its key, 3 hex digits."""
    return f"{zlib.crc32(identity.encode('utf-8', 'surrogateescape')) % BUCKETS:03x}"


def identity_key(identity: str) -> str:
    """The key holding the profile of the subscriber owning a canonical identity."""
    return f"{PREFIX}{{{bucket(identity)}}}:id:{identity}"


def history_key(subscriber: str) -> str:
    """The key of a subscriber's history, in its own bucket."""
    return f"{PREFIX}{{{bucket(subscriber)}}}:history:{subscriber}"


def ready_key(key: str) -> str:
    """The readiness marker in the same slot as an identity key (same bucket)."""
    return key[: key.index("}") + 1] + ":ready"


def identity_of(key: str) -> str:
    """The identity an identity key holds the profile of."""
    return key[key.index("}:id:") + len("}:id:") :]


READY_KEYS = tuple(f"{PREFIX}{{{number:03x}}}:ready" for number in range(BUCKETS))
