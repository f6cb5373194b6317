"""Media for connected calls: SDP rules, paced audio tracks, the WhatsApp WebRTC leg."""
