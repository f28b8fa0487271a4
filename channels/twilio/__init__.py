"""Twilio: SMS/MMS and WhatsApp-via-Twilio messaging, and phone calls through ConversationRelay."""
