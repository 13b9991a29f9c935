"""Drives `nextflow serve` with the official `openai` Python client (pip install openai).

    python3 tools/serve/openai_client_check.py --base-url http://127.0.0.1:8080/v1 \
        --expect-image cli.png   # `nextflow generate -p "a red circle" -s 7 -o cli.png`

Checks: client.images.generate (b64_json) gives the CLI's bytes for prompt and seed;
client.chat.completions.create answers a question about that image, and the streamed
answer equals the non-streamed one. Prints `openai client: ok` on success.
"""
import argparse
import base64
import sys

import openai


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--expect-image", required=True, help="the CLI's PNG for 'a red circle', seed 7")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=300)

    model = client.models.list().data[0].id
    r = client.images.generate(prompt="a red circle", n=1, response_format="b64_json", extra_body={"seed": 7})
    png = base64.b64decode(r.data[0].b64_json)
    with open(args.expect_image, "rb") as f:
        expected = f.read()
    if png != expected:
        sys.exit(f"images.generate: {len(png)} bytes differ from the CLI's {len(expected)}")

    url = "data:image/png;base64," + base64.b64encode(png).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "what color is the circle?"}, {"type": "image_url", "image_url": {"url": url}}]}]
    c = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    answer = c.choices[0].message.content
    if not answer or not answer.strip():
        sys.exit(f"chat: empty answer: {c}")
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True) if ch.choices)
    if streamed != answer:
        sys.exit(f"chat: streamed {streamed!r} != non-streamed {answer!r}")

    try:
        client.images.generate(prompt="a purple elephant", response_format="b64_json")
        sys.exit("an unknown word was accepted")
    except openai.BadRequestError as e:
        if "purple" not in str(e):
            sys.exit(f"the 400 does not name the word: {e}")
    print(f"openai client: ok (model {model}, image {len(png)} bytes, answer {answer.strip()!r})")


if __name__ == "__main__":
    main()
