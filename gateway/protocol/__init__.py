"""The OpenAI API's request types as pydantic models, a module per endpoint in the order
OpenAI's reference lists them: ``chat_completions`` (with its ``messages``), then
``completions``; ``common`` holds what they share. The responses are ``gateway.responses``.

Requests accept and ignore fields they do not know (clients written for OpenAI or vLLM send
many), and cap every list, string and number in the schema to what the decoder's protobuf
fields and the model hold, so oversized requests fail validation (400, the field named) before
any work. Fields that would choose server code paths are refused, not ignored.
"""
