"""Field 39 response codes: short operator messages (English, Chinese) and the approved set.

Pure data and one pure function, any thread. Messages fit a 20-column display:
English <= 20 characters, Chinese <= 10 characters (each is two columns wide).
Table after the China UnionPay POS response-code list (FIELD-NOTES §1).

Approved codes: UnionPay counts "00", "10", "11", "A2", "A4", "A5", "A6" as success.
KPOS approves on "00", "11" (VIP) and "A2"/"A4"/"A5"/"A6" (approved with a defect, the
operator is told to check with the issuer). "10" (partial approval) is NOT approved:
the terminal has no partial-amount flow, so the sale flow must treat it as a decline
and reverse it (the host did approve something), never as success.
"""
from __future__ import annotations

__all__ = ["RESPONSE_CODES", "APPROVED_CODES", "describe_code"]

RESPONSE_CODES: dict[str, tuple[str, str]] = {
    "00": ("APPROVED", "交易成功"),
    "01": ("REFER TO ISSUER", "请查询发卡行"),
    "03": ("INVALID MERCHANT", "无效商户"),
    "04": ("PICK UP CARD", "没收卡"),
    "05": ("DO NOT HONOUR", "不予承兑"),
    "06": ("ERROR", "出错"),
    "07": ("PICK UP CARD", "没收卡"),
    "09": ("IN PROGRESS", "请求正在处理"),
    "10": ("PARTIAL APPROVAL", "部分金额批准"),
    "11": ("APPROVED (VIP)", "交易成功"),
    "12": ("INVALID TRANSACTION", "无效交易"),
    "13": ("INVALID AMOUNT", "无效金额"),
    "14": ("INVALID CARD", "无效卡号"),
    "15": ("NO SUCH ISSUER", "无此发卡方"),
    "19": ("RE-ENTER TXN", "请重做交易"),
    "20": ("INVALID RESPONSE", "无效应答"),
    "21": ("NO ACTION TAKEN", "不能受理"),
    "22": ("SUSPECTED FAULT", "操作有误"),
    "23": ("FEE NOT ACCEPTED", "不可接受的费用"),
    "25": ("ORIGINAL NOT FOUND", "找不到原始交易"),
    "30": ("FORMAT ERROR", "报文格式错误"),
    "31": ("BANK NOT SUPPORTED", "不支持的银行"),
    "33": ("EXPIRED CARD", "过期卡"),
    "34": ("SUSPECTED FRAUD", "有作弊嫌疑"),
    "35": ("CALL ACQUIRER", "请联系收单行"),
    "36": ("RESTRICTED CARD", "受限制的卡"),
    "37": ("CALL ACQUIRER", "请联系收单行"),
    "38": ("PIN TRIES EXCEEDED", "密码错误次数超限"),
    "39": ("NO CREDIT ACCOUNT", "无此信用卡账户"),
    "40": ("NOT SUPPORTED", "功能尚不支持"),
    "41": ("LOST CARD", "挂失卡"),
    "42": ("NO SUCH ACCOUNT", "无此账户"),
    "43": ("STOLEN CARD", "被窃卡"),
    "44": ("NO SUCH ACCOUNT", "无此账户"),
    "45": ("USE CHIP", "请使用芯片"),
    "51": ("INSUFFICIENT FUNDS", "余额不足"),
    "52": ("NO CHEQUE ACCOUNT", "无此支票账户"),
    "53": ("NO SAVINGS ACCOUNT", "无此储蓄账户"),
    "54": ("EXPIRED CARD", "过期卡"),
    "55": ("WRONG PIN", "密码错"),
    "56": ("NO CARD RECORD", "无此卡记录"),
    "57": ("NOT ALLOWED (CARD)", "持卡人不允许"),
    "58": ("NOT ALLOWED (TERM)", "终端不允许"),
    "59": ("SUSPECTED FRAUD", "有作弊嫌疑"),
    "61": ("AMOUNT LIMIT", "超出金额限制"),
    "62": ("RESTRICTED CARD", "受限制的卡"),
    "63": ("SECURITY VIOLATION", "违反安全规定"),
    "64": ("WRONG ORIG AMOUNT", "原始金额不符"),
    "65": ("COUNT LIMIT", "超出次数限制"),
    "66": ("CALL ACQUIRER", "请联系收单行"),
    "67": ("PICK UP CARD", "没收卡"),
    "68": ("LATE RESPONSE", "应答超时"),
    "75": ("PIN TRIES EXCEEDED", "密码错误次数超限"),
    "77": ("SIGN ON AGAIN", "请重新签到"),
    "79": ("BATCH OUT OF BAL", "批次不平"),
    "90": ("CUTOFF IN PROGRESS", "日切处理中"),
    "91": ("ISSUER UNAVAILABLE", "发卡方不能操作"),
    "92": ("ISSUER UNREACHABLE", "发卡方无法联系"),
    "93": ("TXN NOT ALLOWED", "交易违法"),
    "94": ("DUPLICATE TXN", "重复交易"),
    "95": ("RECONCILE ERROR", "调节控制错"),
    "96": ("SYSTEM ERROR", "系统故障"),
    "97": ("UNKNOWN TERMINAL", "终端未登记"),
    "98": ("NO RESPONSE", "发卡方超时"),
    "99": ("PIN FORMAT ERROR", "密码格式错"),
    "A0": ("MAC ERROR", "MAC校验错"),
    "A1": ("CURRENCY MISMATCH", "币种不一致"),
    "A2": ("APPROVED CHECK BANK", "交易成功请查询"),
    "A3": ("NO SUCH ACCOUNT", "无此账户"),
    "A4": ("APPROVED CHECK BANK", "交易成功请查询"),
    "A5": ("APPROVED CHECK BANK", "交易成功请查询"),
    "A6": ("APPROVED CHECK BANK", "交易成功请查询"),
    "A7": ("SECURITY FAILURE", "安全处理失败"),
}

APPROVED_CODES: frozenset[str] = frozenset({"00", "11", "A2", "A4", "A5", "A6"})

_LANG_INDEX = {"en": 0, "zh": 1}
_UNKNOWN = {"en": "DECLINED ({})", "zh": "交易失败({})"}


def describe_code(code: str, lang: str = "en") -> str:
    """Operator message for response code `code` in `lang` ("en" or "zh")."""
    if lang not in _LANG_INDEX:
        raise ValueError(f"lang {lang!r}: expected one of {sorted(_LANG_INDEX)}")
    entry = RESPONSE_CODES.get(code)
    if entry is None:
        return _UNKNOWN[lang].format(code)
    return entry[_LANG_INDEX[lang]]
