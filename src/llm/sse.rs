//! Server-sent events as OpenAI and GigaChat stream them: `data: <json>` lines, ended by
//! `data: [DONE]`.

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};

use super::Error;

/// The `data` payloads of an SSE body, without the final `[DONE]`.
pub fn data_lines(response: reqwest::Response) -> impl Stream<Item = Result<String, Error>> + Send {
    response
        .bytes_stream()
        .eventsource()
        .map(|event| match event {
            Ok(event) => Ok(event.data),
            Err(eventsource_stream::EventStreamError::Transport(e)) => {
                Err(Error::from_transport(&e))
            }
            Err(e) => Err(Error::Malformed(e.to_string())),
        })
        .take_while(|data| {
            let done = matches!(data, Ok(d) if d.trim() == "[DONE]");
            std::future::ready(!done)
        })
}
