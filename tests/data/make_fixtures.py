"""Writes the fixture files in this folder (run from the repository root); kept so the fixtures can be reviewed and regenerated."""
from pathlib import Path
from sibifang.checks import resident_id_check_char as ck
from openpyxl import Workbook
D = Path(__file__).parent
def rid(first17): return first17 + ck(first17)
good1 = rid("33020319560312002"); good2 = rid("33020319480705004"); good3 = rid("33028119800101123"); good4=rid("33020319700228006")
bad_check = good4[:17] + ("0" if good4[-1] != "0" else "1")
bad_birth = rid("33020319561332002")
hdr = "household_id,head_name,id_number,phone,address,grid_id,categories,members,elderly_living_alone,consent,basic_situation,difficulties,measures,away_from,away_until,away_reason"
rows = [
 f"H001,王秀英,{good1},13805740001,海曙区示例路1号,G001,empty_nest,1,1,1,独居,行动不便,志愿者上门,,,",       # 2 clean
 f"H002,李桂兰,{bad_check},13805740002,海曙区示例路2号,G001,hardship,3,0,1,,,,,,",                               # 3 bad check digit
 f"H003,陈美华,{good2},13805740003,海曙区示例路3号,G999,left_behind,2,0,1,,,,,,",                                  # 4 unknown grid
 f"H004,赵玉珍,{good3},1380574,海曙区示例路4号,G002,dispute,4,0,1,,,,,,",                                          # 5 bad phone
 f"H005,,{rid('33020319650909008')},0574-87654321,海曙区示例路5号,G002,,3,0,1,,,,,,",                             # 6 empty head_name
 f"H001,周丽,{rid('33020319750505010')},13805740006,海曙区示例路6号,G002,,2,0,1,,,,,,",                              # 7 duplicate id
 f"H007,吴芳,{bad_birth},13805740007,海曙区示例路7号,G002,\"困难家庭;空巢老人\",2,是,否,,,,2026-13-45,,住院",   # 8 bad birth + bad date
 f"H008,郑霞,{rid('33020319820606012')},+86 138 0574 0008,海曙区示例路8号,G002,创业困难；婚姻家庭矛盾,5,0,1,\"多行\n备注\",,,2026-03-01,2026-02-01,外出务工",  # 9 multi-line cell; away_until < away_from (line 9)
 f"H009,孙红,{rid('33020319900101014').lower()},13805740009,海曙区示例路9号,G001,unknown_cat,2,maybe,1,,,,,,",  # 11 (after multiline) unknown category + bad bool
 "",
 "H010,钱敏,,,海曙区示例路10号,G001,,1,1,1,,,,,,",  # 13 clean without id/phone
]
(D/"households_broken.csv").write_text(hdr + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
clean = [
 f"H101,王秀英,{good1},13805740001,海曙区示例路1号,G001,empty_nest,1,1,1,独居,行动不便,志愿者上门,,,",
 f"H102,陈美华,{good2},0574-87654321,海曙区示例路3号,G002,留守妇女儿童;困难家庭,2,否,是,,,,2026-01-10,2026-02-10,住院",
 f"H103,赵玉珍,{good3[:17]}{good3[17].lower()},13905740003,海曙区示例路4号,G002,,4,0,1,,,,,,",
]
(D/"households_clean.csv").write_text("\ufeff" + hdr + "\n" + "\n".join(clean) + "\n", encoding="utf-8")
gbk = [
 f"H201,王秀英,{good1},13805740001,海曙区示例路1号,G001,空巢老人,1,是,是,独居,行动不便,志愿者上门,,,",  # 2 clean
 f"H202,李桂兰,{bad_check},13805740002,海曙区示例路2号,G001,困难家庭,3,否,是,,,,,,",                    # 3 bad check digit
 f"H203,陈美华,{good2},13805740003,海曙区示例路3号,,留守妇女儿童,2,否,是,,,,,,",                        # 4 empty grid
]
(D/"households_gbk.csv").write_bytes((hdr + "\r\n" + "\r\n".join(gbk) + "\r\n").encode("gbk"))
(D/"areas_missing_columns.csv").write_text("grid_id,grid_name,village_id,village_name\nG001,一网格,V01,示例村\n", encoding="utf-8")
# cadres.xlsx: numbers typed as numbers, labels in Chinese.
wb = Workbook(); ws = wb.active; ws.title = "干部"
ws.append(["cadre_id","name","phone","role","grid_ids","capacity","alert_channel","alert_address","four_plus_one","grassroots_weekday","on_leave_from","on_leave_until"])
import datetime as dt
ws.append(["K001","张婷",13805741001,"网格员","G001",0,"sms","13805741001",0,None,None,None])                     # 2 clean
ws.append(["K002","李娜",13805741002,"执委","G001;G002",10,"wecom","https://qyapi.example.invalid/x",1,2,dt.datetime(2026,1,5),dt.datetime(2026,1,9)])  # 3 clean
ws.append(["K003","王敏",5550123,"妇联干部","G001",10,None,None,0,None,None,None])                                   # 4 bad phone
ws.append(["K004","刘洋",13805741004,"队长","G001",10,None,None,0,None,None,None])                                # 5 unknown role
ws.append(["K005","陈静",13805741005,"cadre","G001",10,"sms","not-a-phone",0,None,None,None])                       # 6 bad alert address
ws.append(["K006","杨丽",13805741006,"vice_chair","G001",10,"email",None,1,None,None,None])                         # 7 address missing + weekday missing
ws.append(["K007","黄燕",13805741007,"cadre","G404",250,"webhook","https://hooks.example.invalid/1",0,None,None,None])  # 8 unknown grid + capacity out of range
ws.append([None]*12)
wb.save(D/"cadres_broken.xlsx")

