from obi.protocols.http import HttpRequestFacts

def request_headers(data: bytes, line_end: int, total_len: int, method: str, target: str, path: str,
                    version: str, facts: type[HttpRequestFacts], /) -> HttpRequestFacts: ...
