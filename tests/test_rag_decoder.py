
"""Decoder golden tests on the real mainnet blocks in ``../shared/data/mainnet`` and robustness on malformed input.

The goldens were produced by the decoder and checked by hand against the raw calldata and logs (several facts are also
re-derived independently below). To regenerate after an intended change: ``RAG_UPDATE_GOLDEN=1 pytest
tests/test_rag_decoder.py -k golden -s`` prints the new table.
"""

from __future__ import annotations

import json
import os

import pytest

from monmouth.chain import create_address
from monmouth.types import Block, Log, Receipt, Transaction
from monmouth_rag.abi import build_registry, parse_signature
from monmouth_rag.decoded import INTENTS, scale
from monmouth_rag.decoder import decode_transaction, render_transaction
from tests.chains import load_mainnet_blocks

BLOCKS = {b.number: b for b in load_mainnet_blocks()}

GOLDEN: dict[tuple[int, int], str] = {
    (18000000, 4): (
        'USDT transfer of 337.095759 USDT to 0x7e7bdf8b9bc6bdeeb936e694b3e721424c364e90.\n'
        'Transaction 0x73ee5f2594e154c73590ba8339e69a553b14ccce29b5a976b2725885cf86e185 in block 18000000 at 2023-08-26 16:21:35 UTC, index 4, status success, intent transfer.\n'
        'From 0x28c6c06298d514db089934071355e5743bf21d60.\n'
        'To 0xdac17f958d2ee523a2206206994597c13d831ec7 (Tether USD).\n'
        'Value 0 ETH.\n'
        'Call transfer(to=0x7e7bdf8b9bc6bdeeb936e694b3e721424c364e90, value=337.095759 USDT).\n'
        'Events (1):\n'
        '- log 52: Transfer of 337.095759 USDT from 0x28c6c06298d514db089934071355e5743bf21d60 to 0x7e7bdf8b9bc6bdeeb936e694b3e721424c364e90'
    ),
    (18000000, 3): (
        'ETH transfer of 0.06997 ETH to 0x846f480e35ef9c99f0160783850f01ba2c2bc907.\n'
        'Transaction 0x5119dcc6bb07181742fd0366196021b120cc1c022c62ce3d3e272a7584fe4e2f in block 18000000 at 2023-08-26 16:21:35 UTC, index 3, status success, intent transfer.\n'
        'From 0xe4edb277e41dc89ab076a1f049f4a3efa700bce8.\n'
        'To 0x846f480e35ef9c99f0160783850f01ba2c2bc907.\n'
        'Value 0.06997 ETH.\n'
        'No calldata.'
    ),
    (18000000, 10): (
        'Swap on Uniswap V2: Router 2: sent 0.04 ETH; received 107194605714260 units of token 0x6541e93492d87a2b6b896e0086c2814a3dda4990.\n'
        'Transaction 0xb243a19756f159a6f80a5b972596957cfbd671970ab414a7cac4f895b892dca6 in block 18000000 at 2023-08-26 16:21:35 UTC, index 10, status success, intent swap.\n'
        'From 0x610aee4b64c115730c10bee4e6fdf36ffe0ac50b.\n'
        'To 0x7a250d5630b4cf539739df2c5dacb4c659f2488d (Uniswap V2: Router 2).\n'
        'Value 0.04 ETH.\n'
        'Call swapExactETHForTokensSupportingFeeOnTransferTokens(amountOutMin=105280416326504, path=[0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2 (Wrapped Ether), 0x6541e93492d87a2b6b896e0086c2814a3dda4990], to=0x610aee4b64c115730c10bee4e6fdf36ffe0ac50b, deadline=1693067010).\n'
        'Events (6):\n'
        '- log 56: Deposit(dst=0x7a250d5630b4cf539739df2c5dacb4c659f2488d (Uniswap V2: Router 2), wad=0.04 WETH) from 0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2 (Wrapped Ether)\n'
        '- log 57: Transfer of 0.04 WETH from 0x7a250d5630b4cf539739df2c5dacb4c659f2488d (Uniswap V2: Router 2) to 0x102ca530f96c0f9135df4fb8e0ea8f7c7216e6a1\n'
        '- log 58: Transfer of 2187645014576 units of token 0x6541e93492d87a2b6b896e0086c2814a3dda4990 from 0x102ca530f96c0f9135df4fb8e0ea8f7c7216e6a1 to 0x6541e93492d87a2b6b896e0086c2814a3dda4990\n'
        '- log 59: Transfer of 107194605714260 units of token 0x6541e93492d87a2b6b896e0086c2814a3dda4990 from 0x102ca530f96c0f9135df4fb8e0ea8f7c7216e6a1 to 0x610aee4b64c115730c10bee4e6fdf36ffe0ac50b\n'
        '- log 60: Sync(reserve0=13912264879908158, reserve1=5112314015426172298) from 0x102ca530f96c0f9135df4fb8e0ea8f7c7216e6a1\n'
        '- log 61: Swap(sender=0x7a250d5630b4cf539739df2c5dacb4c659f2488d (Uniswap V2: Router 2), amount0In=0, amount1In=40000000000000000, amount0Out=109382250728836, amount1Out=0, to=0x610aee4b64c115730c10bee4e6fdf36ffe0ac50b) from 0x102ca530f96c0f9135df4fb8e0ea8f7c7216e6a1'
    ),
    (18000000, 9): (
        'Contract creation: 0xc0f1c87de7d8235cb960ed8742659503a4881c73 deploys contract 0x0a82fc64ecfd6669899857ae3bb4c85398721fdd.\n'
        'Transaction 0x24578bf2676fabd01269543dda61e53496a3282b1d9794ddb141319578052359 in block 18000000 at 2023-08-26 16:21:35 UTC, index 9, status success, intent contract_creation.\n'
        'From 0xc0f1c87de7d8235cb960ed8742659503a4881c73.\n'
        'Creates contract 0x0a82fc64ecfd6669899857ae3bb4c85398721fdd.\n'
        'Value 0 ETH.\n'
        'Init code 14252 bytes.\n'
        'Events (2):\n'
        '- log 54: OwnershipTransferred(previousOwner=0x0000000000000000000000000000000000000000 (null address), newOwner=0xc0f1c87de7d8235cb960ed8742659503a4881c73) from 0x0a82fc64ecfd6669899857ae3bb4c85398721fdd\n'
        '- log 55: Transfer of 10000000000000000000 units of token 0x0a82fc64ecfd6669899857ae3bb4c85398721fdd from 0x0000000000000000000000000000000000000000 (null address) to 0xc0f1c87de7d8235cb960ed8742659503a4881c73'
    ),
    (18000000, 0): (
        'Call of unknown function 0x5578ceae on 0xfd14567eaf9ba941cb8c8a94eec14831ca7fd1b4.\n'
        'Transaction 0x16e199673891df518e25db2ef5320155da82a3dd71a677e7d84363251885d133 in block 18000000 at 2023-08-26 16:21:35 UTC, index 0, status success, intent other.\n'
        'From 0x16d5783a96ab20c9157d7933ac236646b29589a4.\n'
        'To 0xfd14567eaf9ba941cb8c8a94eec14831ca7fd1b4.\n'
        'Value 0 ETH.\n'
        'Call of unknown function selector 0x5578ceae with 1088 bytes of arguments.\n'
        'Events (1):\n'
        '- log 0: unknown event from 0xfd14567eaf9ba941cb8c8a94eec14831ca7fd1b4, topics [0xb8b9c39aeba1cfd98c38dfeebe11c2f7e02b334cbe9f05f22b442a5d9c1ea0c5], 96 bytes of data'
    ),
    (4404763, 54): (
        'Deposit of 19995 LINK into EtherDelta 2.\n'
        'Transaction 0xe6abd4591f85ea89017a07a43a57ef1921f3b511a7d2517e6da35b7927fc6782 in block 4404763 at 2017-10-21 23:33:08 UTC, index 54, status success, intent deposit.\n'
        'From 0x97bc2d837884147db3d1574d84d14385e1f5c7d9.\n'
        'To 0x8d12a197cb00d4747a1fe03395095ce2a5cc6819 (EtherDelta 2).\n'
        'Value 0 ETH.\n'
        'Call depositToken(token=0x514910771af9ca656af840dff83e8264ecf986ca (ChainLink Token), amount=19995000000000000000000).\n'
        'Events (2):\n'
        '- log 29: Transfer of 19995 LINK from 0x97bc2d837884147db3d1574d84d14385e1f5c7d9 to 0x8d12a197cb00d4747a1fe03395095ce2a5cc6819 (EtherDelta 2)\n'
        '- log 30: Deposit(token=0x514910771af9ca656af840dff83e8264ecf986ca (ChainLink Token), user=0x97bc2d837884147db3d1574d84d14385e1f5c7d9, amount=19995000000000000000000, balance=19995932283018240839034) from 0x8d12a197cb00d4747a1fe03395095ce2a5cc6819 (EtherDelta 2)'
    ),
    (4404763, 63): (
        'Failed: Swap on EtherDelta 2.\n'
        'Transaction 0x544bc103dec20a0f4d028d284b43602661ed005de83cf5a83f3d711b4a85dee1 in block 4404763 at 2017-10-21 23:33:08 UTC, index 63, status failed, intent swap.\n'
        'From 0xf94f36bff970cdbbcfab04872fdf1ca4b53fd540.\n'
        'To 0x8d12a197cb00d4747a1fe03395095ce2a5cc6819 (EtherDelta 2).\n'
        'Value 0 ETH.\n'
        'Call trade(tokenGet=0x0000000000000000000000000000000000000000 (null address), amountGet=12550000000000000, tokenGive=0x539efe69bcdd21a83efd9122571a64cc25e0282b, amountGive=100000000000, expires=4408403, nonce=3860675537, user=0x73f645c0bde3605544b157f62e5960ddc8ea8a84, v=28, r=0xb47b8fdfab98c753864acff056bf96c5a56d77b1007aa59af627d6c2bb250268, s=0x74a6ee60641d8bfeb722054a7f7fcf7af2723ffe61d2b7542d94612721703256, amount=24209667407170).'
    ),
    (7280016, 28): (
        'Approval on token 0xc42209accc14029c1012fb5680d95fbd6036e2a0: 0x8d12a197cb00d4747a1fe03395095ce2a5cc6819 (EtherDelta 2) may spend 3000000000000000000000.\n'
        'Transaction 0xa871c06cbd13fdd388020bd310f8f8a95c8b483002ff0a96f6d7d2edd47c2243 in block 7280016 at 2019-02-28 19:57:14 UTC, index 28, status success, intent approve.\n'
        'From 0x5caa66408617f77601d0dc19c163621e7f4b8b38.\n'
        'To 0xc42209accc14029c1012fb5680d95fbd6036e2a0.\n'
        'Value 0 ETH.\n'
        'Call approve(spender=0x8d12a197cb00d4747a1fe03395095ce2a5cc6819 (EtherDelta 2), value=3000000000000000000000).\n'
        'Events (1):\n'
        '- log 20: Approval(owner=0x5caa66408617f77601d0dc19c163621e7f4b8b38, spender=0x8d12a197cb00d4747a1fe03395095ce2a5cc6819 (EtherDelta 2), value=3000000000000000000000) from 0xc42209accc14029c1012fb5680d95fbd6036e2a0'
    ),
    (7280016, 88): (
        'Revocation of approval for all token 0x31af195db332bc9203d758c74df5a5c5e597cdb7 NFTs to operator 0x3414a47f1a1dcd0c64422cd2031fe5d41a9a2bec.\n'
        'Transaction 0x1d36e985093c20a36a44ccc96c116aa2f52548a9fda5deee653cc9238a5dd77c in block 7280016 at 2019-02-28 19:57:14 UTC, index 88, status success, intent approve.\n'
        'From 0x660f68bb38cba3afdf110c47c082d9c0c3888732.\n'
        'To 0x31af195db332bc9203d758c74df5a5c5e597cdb7.\n'
        'Value 0 ETH.\n'
        'Call setApprovalForAll(operator=0x3414a47f1a1dcd0c64422cd2031fe5d41a9a2bec, approved=false).\n'
        'Events (1):\n'
        '- log 75: ApprovalForAll(owner=0x660f68bb38cba3afdf110c47c082d9c0c3888732, operator=0x3414a47f1a1dcd0c64422cd2031fe5d41a9a2bec, approved=false) from 0x31af195db332bc9203d758c74df5a5c5e597cdb7'
    ),
    (11098450, 114): (
        'Call of unknown function 0x223da1ba on 0xaeb960ed44c8a4ce848c50ef451f472a503456b2.\n'
        'Transaction 0x895d3f2482c900bf9e7623679b702eb06e0729e00ee494c928a1fed8634aa5cd in block 11098450 at 2020-10-21 08:33:05 UTC, index 114, status success, intent other.\n'
        'From 0xfd21df0783d9ec18896d487c8da4dda98fa54b38.\n'
        'To 0xaeb960ed44c8a4ce848c50ef451f472a503456b2.\n'
        'Value 0 ETH.\n'
        'Call of unknown function selector 0x223da1ba with 1088 bytes of arguments.\n'
        'Events (5):\n'
        '- log 118: unknown event from 0xaeb960ed44c8a4ce848c50ef451f472a503456b2, topics [0xd03c77ba06fdea91615ddd289bcef4a278bcbf729ba06c5d12b6fd9d5a0998d2, 0x000000000000000000000000a6ebcb6da8e39616b19826624f87288bfeb2f01c, 0x0000000000000000000000000c36a2b5e63c6e6ef41b7306036443afa10bdc74], 32 bytes of data\n'
        '- log 119: unknown event from 0xaeb960ed44c8a4ce848c50ef451f472a503456b2, topics [0xd03c77ba06fdea91615ddd289bcef4a278bcbf729ba06c5d12b6fd9d5a0998d2, 0x000000000000000000000000327305a797d92a39cee1a225d7e2a1cc42b1a8fa, 0x000000000000000000000000a6199ba2e5b2cbdb482c4303fa33baca37db1848], 32 bytes of data\n'
        '- log 120: Approval(owner=0x327305a797d92a39cee1a225d7e2a1cc42b1a8fa, approved=0x0000000000000000000000000000000000000000 (null address), tokenId=4771777733279974003696071198333825919775117376669647454203990931167900331263) from 0x629a673a8242c2ac4b7b8c5d8735fbeac21a6205\n'
        '- log 121: Transfer of NFT token 0x629a673a8242c2ac4b7b8c5d8735fbeac21a6205 #4771777733279974003696071198333825919775117376669647454203990931167900331263 from 0x327305a797d92a39cee1a225d7e2a1cc42b1a8fa to 0xa6ebcb6da8e39616b19826624f87288bfeb2f01c\n'
        '- log 122: unknown event from 0xaeb960ed44c8a4ce848c50ef451f472a503456b2, topics [0x43eb744b69e2ba057b09224246fa56336142aad9761bcd000ffd900a59431795, 0x00000000000000000000000000000000ddd613faa8a348bc815b24136f961016], 480 bytes of data'
    ),
    (13998626, 5): (
        'Swap on Uniswap V3: SwapRouter02: sent 1.03 ETH; received 1006872677941423431675 units of token 0xdb5c3c46e28b53a39c255aa39a411dd64e5fed9c.\n'
        'Transaction 0x9ee03d5922b2a901e3fc05d8a6351165b9f211162363c790c98746ef229e395c in block 13998626 at 2022-01-13 17:57:51 UTC, index 5, status success, intent swap.\n'
        'From 0x01c1eee6d802645dcccefd9f609765db864188a9.\n'
        'To 0x68b3465833fb72a70ecdf485e0e4c7bd8665fc45 (Uniswap V3: SwapRouter02).\n'
        'Value 1.03 ETH.\n'
        'Call multicall(deadline=1642096742, data=[exactInputSingle]).\n'
        'Events (4):\n'
        '- log 11: Transfer of 1006872677941423431675 units of token 0xdb5c3c46e28b53a39c255aa39a411dd64e5fed9c from 0x4b3d09151ad295623ac9e50967739fd437b0d892 to 0x01c1eee6d802645dcccefd9f609765db864188a9\n'
        '- log 12: Deposit(dst=0x68b3465833fb72a70ecdf485e0e4c7bd8665fc45 (Uniswap V3: SwapRouter02), wad=1.03 WETH) from 0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2 (Wrapped Ether)\n'
        '- log 13: Transfer of 1.03 WETH from 0x68b3465833fb72a70ecdf485e0e4c7bd8665fc45 (Uniswap V3: SwapRouter02) to 0x4b3d09151ad295623ac9e50967739fd437b0d892\n'
        '- log 14: Swap(sender=0x68b3465833fb72a70ecdf485e0e4c7bd8665fc45 (Uniswap V3: SwapRouter02), recipient=0x01c1eee6d802645dcccefd9f609765db864188a9, amount0=1030000000000000000, amount1=-1006872677941423431675, sqrtPriceX96=2477890150259503929936941613362, liquidity=13463488133523594195203, tick=68860) from 0x4b3d09151ad295623ac9e50967739fd437b0d892'
    ),
    (15753009, 66): (
        'Swap on OpenSea: Seaport 1.1: sent 0.052 ETH; received NFT token 0xaea4fa9451f527d5f36e65f833d88dbb56a0c264 #3011.\n'
        'Transaction 0x99cc9669acb59dbdf7faab662e81dd173d6f69811075427e38a8152572faee56 in block 15753009 at 2022-10-15 10:46:35 UTC, index 66, status success, intent swap.\n'
        'From 0x213ee0b96eb023f92b825c34e65c593e91ce160c.\n'
        'To 0x00000000006c3852cbef3e08e8df289169ede581 (OpenSea: Seaport 1.1).\n'
        'Value 0.052 ETH.\n'
        'Call fulfillBasicOrder(parameters=(considerationToken=0x0000000000000000000000000000000000000000 (null address), considerationIdentifier=0, considerationAmount=46800000000000000, offerer=0x5af61fbc90e843bddc5a3424ee4cf34f8c14878a, zone=0x004c00500000ad104d7dbd00e3ae0a5c00560c00, offerToken=0xaea4fa9451f527d5f36e65f833d88dbb56a0c264, offerIdentifier=3011, offerAmount=1, basicOrderType=2, startTime=1665830621, endTime=1668509021, zoneHash=0x0000000000000000000000000000000000000000000000000000000000000000, salt=24446860302761739304752683030156737591518664810215442929808038808061322215663, offererConduitKey=0x0000007b02230091a7ed01230072f7006a004d60a8d4e71d599b8104250f0000, fulfillerConduitKey=0x0000000000000000000000000000000000000000000000000000000000000000, totalOriginalAdditionalRecipients=2, additionalRecipients=[(amount=1300000000000000, recipient=0x0000a26b00c1f0df003000390027140000faa719), (amount=3900000000000000, recipient=0x2201f580067ff833b25233da236a0f5b31dbfc96)], signature=0x6edcab77497406c4c9e7d1755205cc7b882bcef1deb585f2ae9d513ec4d35b4a… (65 bytes))).\n'
        'Events (3):\n'
        '- log 91: OrderFulfilled(orderHash=0x91ce6dc3f2d471372aad0aae0348dd4f52d6a5c8bbf7b81870cf561661f5b71d, offerer=0x5af61fbc90e843bddc5a3424ee4cf34f8c14878a, zone=0x004c00500000ad104d7dbd00e3ae0a5c00560c00, recipient=0x213ee0b96eb023f92b825c34e65c593e91ce160c, offer=[(itemType=2, token=0xaea4fa9451f527d5f36e65f833d88dbb56a0c264, identifier=3011, amount=1)], consideration=[(itemType=0, token=0x0000000000000000000000000000000000000000 (null address), identifier=0, amount=46800000000000000, recipient=0x5af61fbc90e843bddc5a3424ee4cf34f8c14878a), (itemType=0, token=0x0000000000000000000000000000000000000000 (null address), identifier=0, amount=1300000000000000, recipient=0x0000a26b00c1f0df003000390027140000faa719), (itemType=0, token=0x0000000000000000000000000000000000000000 (null address), identifier=0, amount=3900000000000000, recipient=0x2201f580067ff833b25233da236a0f5b31dbfc96)]) from 0x00000000006c3852cbef3e08e8df289169ede581 (OpenSea: Seaport 1.1)\n'
        '- log 92: Approval(owner=0x5af61fbc90e843bddc5a3424ee4cf34f8c14878a, approved=0x0000000000000000000000000000000000000000 (null address), tokenId=3011) from 0xaea4fa9451f527d5f36e65f833d88dbb56a0c264\n'
        '- log 93: Transfer of NFT token 0xaea4fa9451f527d5f36e65f833d88dbb56a0c264 #3011 from 0x5af61fbc90e843bddc5a3424ee4cf34f8c14878a to 0x213ee0b96eb023f92b825c34e65c593e91ce160c'
    ),
    (15753009, 68): (
        'Deposit of 0.2 ETH into WETH (Wrapped Ether).\n'
        'Transaction 0x484cf5e89b2d7053f71b618203ef8658a3ebad7f3de3530f1594e8449bee8a37 in block 15753009 at 2022-10-15 10:46:35 UTC, index 68, status success, intent deposit.\n'
        'From 0x11f299be854c1a7c16b4217a69ae88291d33332a.\n'
        'To 0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2 (Wrapped Ether).\n'
        'Value 0.2 ETH.\n'
        'Call deposit().\n'
        'Events (1):\n'
        '- log 95: Deposit(dst=0x11f299be854c1a7c16b4217a69ae88291d33332a, wad=0.2 WETH) from 0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2 (Wrapped Ether)'
    ),
    (16899757, 13): (
        'Swap on Uniswap: Universal Router (v1): sent 39674141858751219830184 units of token 0x1a16b2b93b37a7ef5cb0a4f978ced45fe14a5486, 753808695316273176773499 units of token 0x1a16b2b93b37a7ef5cb0a4f978ced45fe14a5486; received 0.13319 ETH.\n'
        'Transaction 0x7639930891458b09815a771dc2df2388705337bb30d3c263f31f87e3550e7815 in block 16899757 at 2023-03-24 20:32:23 UTC, index 13, status success, intent swap.\n'
        'From 0xe27ff37fdc0a50767114dda53b91f2777b243a99.\n'
        'To 0xef1c6e67703c7bd7107eed8303fbe6ec2554bf6b (Uniswap: Universal Router (v1)).\n'
        'Value 0 ETH.\n'
        'Call execute(commands=[PERMIT2_PERMIT, V2_SWAP_EXACT_IN, UNWRAP_WETH], inputs=[0x0000000000000000000000001a16b2b93b37a7ef5cb0a4f978ced45fe14a5486… (352 bytes), 0x0000000000000000000000000000000000000000000000000000000000000002… (256 bytes), 0x0000000000000000000000000000000000000000000000000000000000000001000000000000000000000000000000000000000000000000018b310135ec64b3], deadline=1679691719).\n'
        'Events (8):\n'
        '- log 78: Permit(owner=0xe27ff37fdc0a50767114dda53b91f2777b243a99, token=0x1a16b2b93b37a7ef5cb0a4f978ced45fe14a5486, spender=0xef1c6e67703c7bd7107eed8303fbe6ec2554bf6b (Uniswap: Universal Router (v1)), amount=1461501637330902918203684832716283019655932542975, expiration=1682281874, nonce=0) from 0x000000000022d473030f116ddee9f6b43ac78ba3 (Uniswap: Permit2)\n'
        '- log 79: Transfer of 39674141858751219830184 units of token 0x1a16b2b93b37a7ef5cb0a4f978ced45fe14a5486 from 0xe27ff37fdc0a50767114dda53b91f2777b243a99 to 0x1a16b2b93b37a7ef5cb0a4f978ced45fe14a5486\n'
        '- log 80: Transfer of 753808695316273176773499 units of token 0x1a16b2b93b37a7ef5cb0a4f978ced45fe14a5486 from 0xe27ff37fdc0a50767114dda53b91f2777b243a99 to 0x1c3586d90e83a8f911eb3a3f152429d0cb4cc903\n'
        '- log 81: Approval(owner=0xe27ff37fdc0a50767114dda53b91f2777b243a99, spender=0x000000000022d473030f116ddee9f6b43ac78ba3 (Uniswap: Permit2), value=115792089237316195423570985008687907853269984665640563245974746832888733036252) from 0x1a16b2b93b37a7ef5cb0a4f978ced45fe14a5486\n'
        '- log 82: Transfer of 0.13319 WETH from 0x1c3586d90e83a8f911eb3a3f152429d0cb4cc903 to 0xef1c6e67703c7bd7107eed8303fbe6ec2554bf6b (Uniswap: Universal Router (v1))\n'
        '- log 83: Sync(reserve0=128931801429193776067647288, reserve1=22715998911806670610) from 0x1c3586d90e83a8f911eb3a3f152429d0cb4cc903\n'
        '- log 84: Swap(sender=0xef1c6e67703c7bd7107eed8303fbe6ec2554bf6b (Uniswap: Universal Router (v1)), amount0In=753808695316273176773499, amount1In=0, amount0Out=0, amount1Out=133190936961015045, to=0xef1c6e67703c7bd7107eed8303fbe6ec2554bf6b (Uniswap: Universal Router (v1))) from 0x1c3586d90e83a8f911eb3a3f152429d0cb4cc903\n'
        '- log 85: Withdrawal(src=0xef1c6e67703c7bd7107eed8303fbe6ec2554bf6b (Uniswap: Universal Router (v1)), wad=0.13319 WETH) from 0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2 (Wrapped Ether)'
    ),
    (468179, 0): (
        'ETH transfer of 1.727694 ETH to 0x32be343b94f860124dc4fee278fdcbd38c102d88.\n'
        'Transaction 0x7aa5a3987b0806bca267ed9dc26bd3d5dae700844fbe2d30190a9b9ef6bd42de in block 468179 at 2015-10-31 12:16:03 UTC, index 0, status unknown (pre-Byzantium), intent transfer.\n'
        'From 0x3031c59bec7917ec9bf943798a2255c70a73c197.\n'
        'To 0x32be343b94f860124dc4fee278fdcbd38c102d88.\n'
        'Value 1.727694 ETH.\n'
        'No calldata.'
    ),
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_render(key):
    number, index = key
    text = render_transaction(BLOCKS[number], index)
    if os.environ.get("RAG_UPDATE_GOLDEN"):
        print(f"    {key}: {text!r},")
        return
    assert text == GOLDEN[key]


def test_usdt_transfer_facts_match_raw_calldata():
    b = BLOCKS[18000000]
    tx = b.transactions[4]
    d = decode_transaction(b, 4)
    raw_to, raw_amount = tx.input[16:36], int.from_bytes(tx.input[36:68], "big")
    assert d.intent == "transfer" and d.token == "USDT"
    assert d.call is not None and d.call.name == "transfer"
    assert d.call.args[0].value == "0x" + raw_to.hex()
    assert int(d.call.args[1].value) == raw_amount and scale(raw_amount, 6) == "337.095759"
    assert d.transfers[0].amount == raw_amount and d.transfers[0].recipient == raw_to
    # block-wide log index: the logs of the four transactions before it
    assert d.first_log_index == sum(len(r.logs) for r in b.receipts[:4])
    meta = d.to_meta()
    json.dumps(meta)
    assert meta["tx_hash"] == "0x" + tx.hash.hex() and meta["intent"] == "transfer"
    assert set(meta["addresses"]) >= {"0x" + tx.sender.hex(), "0x" + raw_to.hex(), "0x" + tx.to.hex()}


def test_contract_creation_address_matches_receipt_or_nonce_rule():
    b = BLOCKS[18000000]
    tx, rc = b.transactions[9], b.receipts[9]
    assert tx.to is None
    d = decode_transaction(b, 9)
    assert d.intent == "contract_creation"
    assert d.created == create_address(tx.sender, tx.nonce)
    if rc.contract_address is not None:
        assert d.created == rc.contract_address


def test_every_mainnet_transaction_decodes_renders_and_has_a_known_intent():
    n = 0
    for b in BLOCKS.values():
        for i in range(len(b.transactions)):
            d = decode_transaction(b, i)
            assert d.intent in INTENTS
            text = render_transaction(b, i)
            assert f"0x{b.transactions[i].hash.hex()}" in text and f"block {b.number}" in text
            n += 1
    assert n == sum(len(b.transactions) for b in BLOCKS.values())


def test_uniswap_v2_and_v3_swaps_and_weth_events_are_recognised():
    d = decode_transaction(BLOCKS[18000000], 10)
    assert d.intent == "swap" and any(e.name == "Swap" for e in d.events)
    assert "WETH" in d.tokens
    d3 = decode_transaction(BLOCKS[13998626], 5)
    assert d3.intent == "swap" and d3.call.name == "multicall"
    assert any(e.signature == "Swap(address,address,int256,int256,uint160,uint128,int24)" for e in d3.events)
    dep = decode_transaction(BLOCKS[15753009], 68)
    assert dep.intent == "deposit" and dep.token == "WETH"


def _tx(input_: bytes, to: bytes | None = b"\xda" * 20, value: int = 0) -> Transaction:
    return Transaction(hash=b"\x11" * 32, type=2, sender=b"\x22" * 20, to=to, value=value, input=input_, nonce=7,
                       gas_limit=100_000)


def _block(tx: Transaction, logs: tuple[Log, ...] = (), status: int | None = 1) -> Block:
    return Block(1, b"\x01" * 32, b"\x00" * 32, 1_700_000_000, b"\x00" * 20, 30_000_000, 21_000, 10**9, (tx,),
                 (Receipt(status, 21_000, logs),))


@pytest.mark.parametrize("calldata", [
    bytes.fromhex("a9059cbb"),                      # transfer selector, no arguments
    bytes.fromhex("a9059cbb") + b"\x01" * 20,       # truncated arguments
    bytes.fromhex("a9059cbb") + b"\xff" * 64,       # address with dirty high bytes
    bytes.fromhex("38ed1739") + (2**255).to_bytes(32, "big") * 5,  # dynamic offset far out of range
    b"\x01\x02",                                    # shorter than a selector
    bytes.fromhex("deadbeef") + os.urandom(100),    # unknown selector
])
def test_malformed_calldata_renders_raw_and_never_raises(calldata):
    b = _block(_tx(calldata))
    text = render_transaction(b, 0)
    assert "0x" + b.transactions[0].hash.hex() in text
    d = decode_transaction(b, 0)
    assert d.intent in INTENTS


def test_malformed_and_unknown_logs_render_raw():
    transfer = parse_signature("event Transfer(address indexed from, address indexed to, uint256 value)").selector
    logs = (
        Log(b"\xaa" * 20, (transfer, b"\x00" * 32), b""),                       # too few topics for any Transfer
        Log(b"\xaa" * 20, (transfer, b"\x00" * 32, b"\x00" * 32), b"\x01\x02"),  # data too short for uint256
        Log(b"\xbb" * 20, (b"\x99" * 32,), b"\x00" * 64),                       # unknown event
        Log(b"\xcc" * 20, (), b"anonymous"),                                     # no topics at all
    )
    text = render_transaction(_block(_tx(b""), logs), 0)
    assert "unknown event" in text and "0x" + "99" * 32 in text and "topics [none]" in text
    assert "known signature, data does not decode" in text


def test_erc721_and_erc20_transfer_share_topic0_but_decode_apart():
    topic = parse_signature("event Transfer(address indexed from, address indexed to, uint256 value)").selector
    a, b_ = b"\x00" * 12 + b"\x01" * 20, b"\x00" * 12 + b"\x02" * 20
    nft = Log(b"\xaa" * 20, (topic, a, b_, (42).to_bytes(32, "big")), b"")
    ft = Log(b"\xbb" * 20, (topic, a, b_), (10**18).to_bytes(32, "big"))
    d = decode_transaction(_block(_tx(b""), (nft, ft)), 0)
    assert [(t.standard, t.token_id, t.amount) for t in d.transfers] == [("erc721", 42, 1), ("erc20", None, 10**18)]


def test_user_abi_dir_and_labels_take_precedence(tmp_path):
    abi = [{"type": "function", "name": "doThing", "inputs": [{"name": "who", "type": "address"},
                                                              {"name": "n", "type": "uint256"}]},
           {"type": "event", "name": "ThingDone", "inputs": [{"name": "who", "type": "address", "indexed": True}]}]
    (tmp_path / "thing.json").write_text(json.dumps({"abi": abi}))
    (tmp_path / "labels.json").write_text(json.dumps({"0x" + "da" * 20: "My Vault"}))
    (tmp_path / "tokens.json").write_text(json.dumps({"0x" + "ee" * 20: {"symbol": "EEE", "decimals": 2}}))
    reg = build_registry(tmp_path, labels={"0x" + "22" * 20: "Agent Smith"})
    sel = parse_signature("function doThing(address who, uint256 n)").selector
    topic = parse_signature("event ThingDone(address indexed who)").selector
    calldata = sel + b"\x00" * 12 + b"\x22" * 20 + (5).to_bytes(32, "big")
    log = Log(b"\xda" * 20, (topic, b"\x00" * 12 + b"\x22" * 20), b"")
    text = render_transaction(_block(_tx(calldata), (log,)), 0, registry=reg)
    assert "Call doThing(who=0x" + "22" * 20 + " (Agent Smith), n=5)" in text
    assert "To 0x" + "da" * 20 + " (My Vault)" in text and "ThingDone(who=" in text
    # per-call labels win over the registry
    text2 = render_transaction(_block(_tx(calldata), (log,)), 0, labels={"0x" + "22" * 20: "Neo"}, registry=reg)
    assert "(Neo)" in text2 and "Agent Smith" not in text2
    erc20 = parse_signature("function transfer(address to, uint256 value)").selector
    calldata = erc20 + b"\x00" * 12 + b"\x33" * 20 + (12345).to_bytes(32, "big")
    t = render_transaction(_block(_tx(calldata, to=b"\xee" * 20)), 0, registry=reg)
    assert "value=123.45 EEE" in t


def test_bad_abi_dir_file_names_the_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        build_registry(tmp_path)


def test_embed_text_is_compact_and_keeps_the_meaning():
    from monmouth_rag.render import embed_text

    d = decode_transaction(BLOCKS[18000000], 4)
    t = embed_text(d)
    assert t == (
        "USDT transfer of 337.095759 USDT to 0x7e7b…4e90.\n"
        "Transfer transaction, succeeded, block 18000000, 2023-08-26.\n"
        "From 0x28c6…1d60 to USDT (Tether USD).\n"
        "Function transfer.\n"
        "Token transfers: 337.095759 USDT."
    )
    swap = embed_text(decode_transaction(BLOCKS[18000000], 10))
    assert swap.startswith("Swap on Uniswap V2: Router 2: sent 0.04 ETH") and "Events: Deposit, Sync, Swap." in swap


def test_failed_and_pre_byzantium_status():
    assert render_transaction(_block(_tx(b""), status=0), 0).startswith("Failed: ")
    assert "status unknown (pre-Byzantium)" in render_transaction(BLOCKS[468179], 0)
