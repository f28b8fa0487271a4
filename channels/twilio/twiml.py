"""The TwiML the gateway answers voice webhooks with (built with the `twilio` package)."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, VoiceResponse

from gateway.settings import PhoneConfig

XML = "text/xml"


def relay(
    *,
    relay_url: str,
    action_url: str,
    phone: PhoneConfig,
    greeting: str | None,
    parameters: Mapping[str, str],
    language: str | None = None,
) -> str:
    """`<Connect action><ConversationRelay …><Parameter/>…</ConversationRelay></Connect>`.

    The parameters come back in the relay's `setup.customParameters`; the signed
    handshake makes them trustworthy, so they identify the session.
    """
    response = VoiceResponse()
    connect = Connect(action=action_url)
    attrs: dict[str, str] = {
        "interruptible": phone.interruptible,
        "dtmfDetection": "true" if phone.dtmf_detection else "false",
    }
    if phone.voice:
        attrs["voice"] = phone.voice
    if phone.tts_provider:
        attrs["ttsProvider"] = phone.tts_provider
    if phone.transcription_provider:
        attrs["transcriptionProvider"] = phone.transcription_provider
    if phone.speech_model:
        attrs["speechModel"] = phone.speech_model
    if phone.hints:
        attrs["hints"] = ",".join(phone.hints)
    if greeting:
        attrs["welcomeGreeting"] = greeting
    if phone.application_reconnect:
        attrs["applicationReconnect"] = "true"
    attrs.update(phone.relay_attributes)
    cr = connect.conversation_relay(url=relay_url, language=language or phone.language, **attrs)
    for name, value in parameters.items():
        cr.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())


def reject(reason: str = "rejected") -> str:
    response = VoiceResponse()
    response.reject(reason="busy" if reason == "busy" else "rejected")
    return str(response.to_xml())


def dial(to: str, caller_id: str | None = None) -> str:
    response = VoiceResponse()
    if to.startswith("sip:"):
        d = response.dial(caller_id=caller_id)
        d.sip(to)
    else:
        response.dial(to, caller_id=caller_id)
    return str(response.to_xml())


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())


def say_and_hangup(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response.to_xml())
