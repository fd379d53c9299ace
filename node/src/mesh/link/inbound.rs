//! A link's inbound side: Noise messages cut out of the peer's byte stream, the handshake,
//! the peer's hello (judged by the owner before anything else of the peer is read), and
//! the transport frames after it. No IO.

use bytes::BytesMut;

use super::{Link, LinkEnd, LinkEvent, MAX_HANDSHAKE_MESSAGE_LEN, Pending, State};
use crate::keys::PublicKey;
use crate::mesh::frame;
use crate::mesh::message::{CloseReason, Hello, Message};
use crate::mesh::noise::{HandshakeError, HandshakeOutput};

impl Link {
    pub(super) fn process(&mut self) {
        loop {
            let progressed = match self.state {
                State::Closed | State::Identified { .. } => false,
                State::Handshaking { .. } => self.process_handshake(),
                State::AwaitingHello { .. } => self.process_hello(),
                State::Up { .. } => self.process_transport(),
            };
            if !progressed {
                break;
            }
        }
    }

    /// Takes one whole Noise message off the wire buffer, failing the link on garbage.
    fn next_noise_message(&mut self) -> Option<BytesMut> {
        match frame::decode_noise(&mut self.rx_wire) {
            Ok(m) => m,
            Err(e) => {
                self.fail(e.to_string());
                None
            }
        }
    }

    /// Handles one handshake message if a whole one is buffered.
    fn process_handshake(&mut self) -> bool {
        if self.rx_wire.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([self.rx_wire[0], self.rx_wire[1]]));
            if len > MAX_HANDSHAKE_MESSAGE_LEN {
                self.fail(format!(
                    "handshake message of {len} bytes exceeds {MAX_HANDSHAKE_MESSAGE_LEN}: not a warren peer"
                ));
                return false;
            }
        }
        let Some(message) = self.next_noise_message() else {
            return false;
        };
        let State::Handshaking { handshake } = &mut self.state else {
            return false;
        };
        let output = handshake.read(&message);
        match output {
            Ok(HandshakeOutput::Reply(reply)) => {
                self.queue_handshake(&reply);
                true
            }
            Ok(HandshakeOutput::ResponderKey(key)) => self.send_hello(key),
            Ok(HandshakeOutput::Identified { key, hello }) => {
                self.identified(key, hello);
                false
            }
            Err(e) => {
                self.handshake_failed(e);
                false
            }
        }
    }

    fn handshake_failed(&mut self, e: HandshakeError) {
        match e {
            HandshakeError::Refused(reason) => {
                self.state = State::Closed;
                self.events
                    .push_back(LinkEvent::Closed(LinkEnd::ByPeer(reason)));
            }
            HandshakeError::Version { theirs } => {
                let state = std::mem::replace(&mut self.state, State::Closed);
                if let State::Handshaking { handshake } = state
                    && let Some(refusal) = handshake.refuse_version(theirs)
                {
                    self.queue_handshake(&refusal);
                }
                let reason = CloseReason::VersionMismatch {
                    sender: crate::mesh::message::PROTOCOL_VERSION,
                    receiver: theirs,
                };
                self.events
                    .push_back(LinkEvent::Closed(LinkEnd::ByUs(reason)));
            }
            e => self.fail(format!("handshake: {e}")),
        }
    }

    /// (Initiator.) The responder showed its key: send message 3 with our hello and wait
    /// for its hello.
    fn send_hello(&mut self, key: PublicKey) -> bool {
        let State::Handshaking { handshake } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return false;
        };
        match handshake.finish_initiator(&self.hello) {
            Ok((last, transport)) => {
                self.queue_handshake(&last);
                self.state = State::AwaitingHello { transport, key };
                true
            }
            Err(e) => {
                self.fail(format!("handshake: {e}"));
                false
            }
        }
    }

    /// (Responder.) The initiator's message 3: report it and wait for the owner.
    fn identified(&mut self, key: PublicKey, hello: Box<Hello>) {
        let State::Handshaking { handshake } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        self.state = State::Identified {
            pending: Pending::Responder(handshake),
        };
        self.events.push_back(identified_event(key, hello));
    }

    /// (Initiator.) The responder's first transport frame must be its hello (or a close).
    fn process_hello(&mut self) -> bool {
        let Some(message) = self.next_noise_message() else {
            return false;
        };
        let State::AwaitingHello { transport, .. } = &mut self.state else {
            return false;
        };
        if transport.decrypt(&message, &mut self.rx_plain).is_err() {
            self.fail("transport message failed authentication".to_owned());
            return false;
        }
        let frame = match frame::decode_frame(&mut self.rx_plain) {
            Ok(Some(f)) => f,
            // The hello spans several Noise messages: wait for the rest.
            Ok(None) => return true,
            Err(e) => {
                self.fail(e.to_string());
                return false;
            }
        };
        match Message::decode_shared(&frame) {
            Ok(Message::Hello(hello)) => {
                let State::AwaitingHello { transport, key } =
                    std::mem::replace(&mut self.state, State::Closed)
                else {
                    return false;
                };
                self.state = State::Identified {
                    pending: Pending::Initiator(Box::new(transport)),
                };
                self.events.push_back(identified_event(key, hello));
                false
            }
            Ok(Message::Close(reason)) => {
                self.state = State::Closed;
                self.rx_wire.clear();
                self.events
                    .push_back(LinkEvent::Closed(LinkEnd::ByPeer(reason)));
                false
            }
            Ok(_) => {
                self.fail("the peer's first frame was not its hello".to_owned());
                false
            }
            Err(e) => {
                self.fail(e.to_string());
                false
            }
        }
    }

    /// Decrypts one transport message and handles every whole frame in it.
    fn process_transport(&mut self) -> bool {
        // Frames that arrived with the peer's hello wait in `rx_plain` for the decision.
        if !self.rx_plain.is_empty() && !self.process_frames() {
            return false;
        }
        let Some(message) = self.next_noise_message() else {
            return false;
        };
        let State::Up { transport, .. } = &mut self.state else {
            return false;
        };
        let mut message = message;
        let opened = if self.rx_plain.is_empty() {
            // The usual case: no frame left over, so the message becomes the buffer.
            transport
                .decrypt_in_place(&mut message)
                .map(|()| self.rx_plain = message)
        } else {
            transport.decrypt(&message, &mut self.rx_plain)
        };
        if opened.is_err() {
            self.fail("transport message failed authentication".to_owned());
            return false;
        }
        self.process_frames()
    }

    /// The first frame from the peer after accepting it: the link is accepted at both ends.
    fn confirm(&mut self) {
        if let State::Up { confirmed, .. } = &mut self.state
            && !*confirmed
        {
            *confirmed = true;
            self.events.push_back(LinkEvent::Up);
        }
    }

    fn process_frames(&mut self) -> bool {
        loop {
            let frame = match frame::decode_frame(&mut self.rx_plain) {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(e) => {
                    self.fail(e.to_string());
                    return false;
                }
            };
            if self.config.tap {
                self.events.push_back(LinkEvent::Plaintext(frame.clone()));
            }
            let message = match Message::decode_shared(&frame) {
                Ok(message) => message,
                Err(e) => {
                    self.fail(e.to_string());
                    return false;
                }
            };
            if let Message::Close(reason) = message {
                self.state = State::Closed;
                self.rx_wire.clear();
                self.events
                    .push_back(LinkEvent::Closed(LinkEnd::ByPeer(reason)));
                return false;
            }
            self.confirm();
            match message {
                Message::Keepalive => {}
                Message::Rekey => {
                    if let State::Up { transport, .. } = &mut self.state {
                        transport.rekey_incoming();
                    }
                }
                Message::Hello(_) => {
                    self.fail("a second hello".to_owned());
                    return false;
                }
                message => self.events.push_back(LinkEvent::Message(message)),
            }
        }
    }
}

fn identified_event(key: PublicKey, hello: Box<Hello>) -> LinkEvent {
    LinkEvent::Identified {
        node: hello.node,
        key,
        epoch: hello.epoch,
        cert: hello.cert.map(Box::new),
        successions: hello.successions,
    }
}
