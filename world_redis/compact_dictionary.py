"""``python -m world_redis.compact_dictionary`` prints the path of the zstd dictionary that the
values of compacted runs (format wfl2) are compressed with, for ``zstd -d -D <path>`` (the
README's cookbook)."""

from ._compact_format import dictionary_path

__all__ = ["dictionary_path"]

if __name__ == "__main__":
    print(dictionary_path())
