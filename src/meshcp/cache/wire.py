"""The two protobuf wire primitives needed to frame messages from cached bytes."""


def varint(value: int) -> bytes:
    """Base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, sub-messages): tag, length, payload."""
    return varint((field_number << 3) | 2) + varint(len(payload)) + payload
