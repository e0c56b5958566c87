"""The protobuf wire primitives for framing from cached bytes and reading them back."""


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


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The base-128 varint at `pos`: its value and the position after it."""
    value = shift = 0
    try:
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
    except IndexError:
        raise ValueError("truncated varint") from None
