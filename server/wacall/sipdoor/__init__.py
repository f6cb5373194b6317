"""The SIP front door's decisions, without I/O: trunks from the config file, whether an INVITE may come in, and the
final response for each refusal. The SIP edge and the call service drive it; it opens nothing itself."""
