"""The SMS stack shared by the cold HSM and the V-device.

Three layers, as for every link: `modem` (the serial port, AT lines and unsolicited result
codes, SMS operations), `failover` (one sender over several SIMs) and `channel_messages`
(the text of the ChainCloud SMS channel, see `docs/sms-channel.md`). Nothing above
`modem` sees AT text; nothing here keeps channel state.
"""
