"""Bitcoin wallet core shared by custody, the HSMs and the V-device (derive, build, sign).

One small module per job (HWI style); import what you need from the module:

- `networks`: `Network` and its constants.        - `bip32`: `ExtendedKey`, paths, `ChainDeriver`.
- `keys`: BIP39 seed, WIF.                          - `addresses`: encode/validate every type.
- `wallets`: `ColdWallet`, `HotWallet`, batches.    - `descriptors`: BIP380-383 for Core.
- `psbt`: `Psbt` (BIP174) over embit.               - `sighash`: BIP143.
- `signatures`: DER, low-S, external signers.       - `coinselect`, `fees`.
- `messages`: signmessage format.                   - `chaincloud`: protocol strings.
- `errors`: `WalletError` and one class per failure (codes 500-599).
- `derive_helper` (with `derive_worker`, `derive_wire`): a batch's derivation on two cores.

The regtest node validates with python-bitcointx; nothing here may import it.
"""
